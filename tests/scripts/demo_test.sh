#!/usr/bin/env bash
# scripts/demo as a new user meets it, with stand-ins for scripts/setup and
# scripts/build (a real build takes minutes): the build's progress shows, a
# failed build shows the compiler's error and a clear line and exits 1, and a
# run says that the bundled model's weights are random.
#   tests/scripts/demo_test.sh <repository root>
set -euo pipefail
repo=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/sdfarm-demo-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$work/scripts"
cp "$repo/scripts/demo" "$work/scripts/demo"
printf '#!/usr/bin/env bash\nexit 0\n' > "$work/scripts/setup"

# 1. A build that fails: its error reaches the user.
cat > "$work/scripts/build" <<'STUB'
#!/usr/bin/env bash
echo "[1/3] Building CXX object client/CMakeFiles/sdfarm_client.dir/commands.cc.o"
echo "FAILED: client/CMakeFiles/sdfarm_client.dir/commands.cc.o"
echo "../client/commands.cc:12:3: error: 'frobnicate' was not declared in this scope" >&2
echo "ninja: build stopped: subcommand failed."
exit 1
STUB
chmod +x "$work/scripts/setup" "$work/scripts/build"
rc=0
out=$(cd "$work" && bash scripts/demo 2>&1) || rc=$?
[ $rc -eq 1 ] || fail "a failed build should exit 1, got $rc: $out"
grep -q "error: 'frobnicate' was not declared" <<<"$out" || fail "the compiler's error is not shown: $out"
grep -q "the build failed" <<<"$out" || fail "no 'the build failed' line: $out"
grep -q "building sdfarm" <<<"$out" || fail "no note that a build starts: $out"

# 2. A build that works: progress lines (plain output: every 10 steps and the last).
cat > "$work/scripts/build" <<'STUB'
#!/usr/bin/env bash
for i in $(seq 1 25); do echo "[$i/25] Building CXX object x$i.o"; done
STUB
mkdir -p "$work/build/worker/tools" "$work/build/client"
# Stand-ins for the programs the demo runs next: mkmodel makes the model, sdfarm local "renders".
cat > "$work/build/worker/tools/sdfarm-mkmodel" <<'STUB'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2/unet" && touch "$2/unet/diffusion_pytorch_model.safetensors"; shift; done
STUB
printf '#!/usr/bin/env bash\necho "local: $*"\n' > "$work/build/client/sdfarm"
chmod +x "$work/build/worker/tools/sdfarm-mkmodel" "$work/build/client/sdfarm"
out=$(cd "$work" && bash scripts/demo 2>&1) || fail "the demo failed: $out"
grep -q "build 10/25" <<<"$out" || fail "no build progress: $out"
grep -q "build 25/25" <<<"$out" || fail "no final build step: $out"
grep -q "RANDOM weights" <<<"$out" || fail "the first run does not say the weights are random: $out"
grep -q "local: local --workers 2" <<<"$out" || fail "sdfarm local did not run: $out"

# 3. A second run (model already made) says it again.
out=$(cd "$work" && bash scripts/demo 2>&1) || fail "the second run failed: $out"
grep -q "RANDOM weights" <<<"$out" || fail "a re-run does not say the weights are random: $out"
echo "demo script: OK"
