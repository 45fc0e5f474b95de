#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ and the crash
inputs under tests/fuzz/regressions/<target>/ (standard library only).

    tests/fuzz/make_corpus.py [SHARED_DIR]     # default: ../shared next to the repository

The seeds are committed; rerun this only to change them. Real safetensors
headers and prompts are taken from the fixtures in SHARED_DIR when present.
regressions/<target>/ holds the inputs that once crashed a target (each also
has a unit test); small ones are corpus seeds too, named regression-*.
"""
import json
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")


def write(target, name, data, base=CORPUS):
    folder = os.path.join(base, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- sweep specs
YAML_SPECS = {
    "readme": """\
name: fox-study
model: sd15
prompts:
  - a red fox in the snow
  - an oil painting of a fox
negative_prompt: blurry
seeds: "0-9,1000"
guidance_scales: [5, 7.5]
steps: 30
samplers: [euler_a, dpmpp_2m]
sizes: [512x512, 768x512]
images_per_combination: 2
combine: product
priority: 1
""",
    "minimal": "name: a\nmodel: m\nprompt: x\nseed: 1\n",
    "zip": """\
name: zip-sweep
model: sd15
combine: zip
prompts: [a cat, a dog, a bird]
negative_prompts: ["", blurry, "low quality"]
seeds: [1, 2, 3]
guidance_scale: 7
sizes: [{width: 512, height: 768}, 64, "1024 x 64"]
samplers: [ddim, lms, dpmpp_2m_karras]
""",
    "width_height": "name: wh\nmodel: sd21\nprompt: 'quoted: text'\nseed: random:3\nwidth: 768\nheight: 512\n"
                    "steps: [20, 50]\nsampler: pndm\nguidance_scales: [0, 100, 12.5e0]\n",
    "anchors": "name: &n anch\nmodel: *n\nprompts: &p [x, y]\nnegative_prompts: *p\nseeds: [0-3, \"7\", 99]\n",
    "flow": "{name: flow, model: m, prompt: \"\\u00e9t\\u00e9 \\U0001F98A\", seed: 18446744073709551615}\n",
    "prompts_file": "name: pf\nmodel: m\nprompts_file: prompts.txt\nnegative_prompts_file: prompts.txt\nseed: 5\n",
    "unicode": "name: uni\nmodel: m\nprompts:\n  - 日本語のテキスト\n  - Москва\n  - \"tab\\tnew\\nline\"\nseeds: \"1, 2 ,3\"\n"
               "samplers: [euler, ddpm]\npriority: 100\n",
    "bad_field": "name: a\nmodel: m\nprompt: x\nseed: 1\nstep: 3\nsize: 513x512\n",
    "multi_doc": "%YAML 1.2\n---\nname: a\nmodel: m\nprompt: |\n  multi\n  line\nseed: 16\n...\n",
    "tags": "name: !!str 123\nmodel: m\nprompt: !!str 42\nseed: !!int 5\nsteps: +8\nguidance_scale: .5\n",
}

JSON_SPECS = {
    "canonical": {"name": "canon", "model": "sd15", "prompts": ["a", "b"], "negative_prompts": [""],
                  "seeds": [0, 1, 2], "guidance_scales": [7.5], "steps": [30], "samplers": ["euler_a"],
                  "sizes": ["512x512"], "images_per_combination": 1, "combine": "product", "priority": 1},
    "singular": {"name": "s", "model": "m", "prompt": "one", "seed": "random:4", "guidance_scale": 3,
                 "sampler": "ddim", "size": 640, "steps": 1},
    "zip": {"name": "z", "model": "m", "combine": "zip", "prompts": ["a", "b", "a"], "seeds": ["1-3"],
            "sizes": ["64x64", "128x64", "64x64"], "steps": [10, 10, 20], "images_per_combination": 3,
            "negative_prompt": "bad"},
    "size_object": {"name": "o", "model": "m", "prompt": "x", "seeds": [5, "10-12"],
                    "sizes": [{"width": 64, "height": 2048}], "priority": 50},
    "width_height": {"name": "wh", "model": "m", "prompt": "x", "seed": 0, "width": 512, "height": 512},
    "errors": {"name": "../up", "model": "m/x", "prompt": "", "seed": -1, "steps": 1e3, "samplers": [],
               "guidance_scale": 101},
}


def sweep_seeds():
    for name, text in YAML_SPECS.items():
        write("fuzz_sweep_spec", "yaml_" + name, "y" + text)
    for name, obj in JSON_SPECS.items():
        text = json.dumps(obj, indent=1, ensure_ascii=False)
        write("fuzz_sweep_spec", "json_" + name, "j" + text)
        write("fuzz_submit_request", name + ".json", text)
    write("fuzz_sweep_spec", "json_duplicate", 'j{"name": "a", "model": "m", "prompt": "x", "seed": 1, "seed": 2}')
    write("fuzz_submit_request", "not_object.json", "[1, 2, 3]")
    write("fuzz_submit_request", "prompts_file.json",
          '{"name": "a", "model": "m", "prompts_file": "/etc/passwd", "seed": 1}')
    write("fuzz_submit_request", "escapes.json",
          '{"name": "e", "model": "m", "prompts": ["\\u00e9\\ud83e\\udd8a", "\\tx"], "seeds": "0-2,random:2"}')


# --------------------------------------------------------------- safetensors
def safetensors(header, metadata=None, data_bytes=0, pad=True):
    obj = {}
    if metadata is not None:
        obj["__metadata__"] = metadata
    obj.update(header)
    body = json.dumps(obj, separators=(",", ":")).encode()
    if pad:
        body += b" " * ((8 - (8 + len(body)) % 8) % 8)
    return struct.pack("<Q", len(body)) + body + bytes(data_bytes)


def real_prefix(path):
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head)
        return head + f.read(n), n


def safetensors_seeds():
    write("fuzz_safetensors_header", "empty_object", safetensors({}))
    write("fuzz_safetensors_header", "metadata_only", safetensors({}, {"format": "pt", "k": "v"}))
    dtypes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    header, offset = {}, 0
    for name, size in dtypes.items():
        header["t_" + name.lower()] = {"dtype": name, "shape": [2, 3], "data_offsets": [offset, offset + 6 * size]}
        offset += 6 * size
    write("fuzz_safetensors_header", "all_dtypes_with_data", safetensors(header, {"format": "pt"}, offset))
    write("fuzz_safetensors_header", "empty_and_scalar", safetensors({
        "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        "empty": {"dtype": "F16", "shape": [0, 7], "data_offsets": [4, 4]},
        "after": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
    }, None, 8))
    write("fuzz_safetensors_header", "overlap", safetensors({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }, None, 12, pad=False))
    write("fuzz_safetensors_header", "huge_dims", safetensors({
        "a": {"dtype": "F64", "shape": [281474976710656, 65536], "data_offsets": [0, 0]},
    }))
    write("fuzz_safetensors_header", "short", b"\x10\x00\x00\x00")
    sources = [
        ("text_encoder", os.path.join(SHARED, "models/tiny-sd/text_encoder/model.safetensors")),
        ("golden_tokenizer", os.path.join(SHARED, "golden/tokenizer.safetensors")),
        ("unet_first_tensors", os.path.join(SHARED, "models/tiny-sd/unet/diffusion_pytorch_model.safetensors")),
    ]
    for name, path in sources:
        if not os.path.exists(path):
            print(f"make_corpus: {path} not found, skipped", file=sys.stderr)
            continue
        prefix, n = real_prefix(path)
        if len(prefix) <= 4096 + 8:
            write("fuzz_safetensors_header", name, prefix)
        else:  # keep seeds small: the real names and layout of the first tensors
            full = json.loads(prefix[8:])
            kept = dict(list(full.items())[:12])
            write("fuzz_safetensors_header", name, safetensors(
                {k: v for k, v in kept.items() if k != "__metadata__"}, kept.get("__metadata__")))


# -------------------------------------------------------------------- prompts
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse, 8k, (masterpiece:1.2)",
    "don't stop believin' - it's a dog's life, isn't it?",
    "café naïve résumé ÜNÏCÖDÉ straße ǅ ΣΑΣ İstanbul",
    "日本語のテキスト and 中文提示词 한국어",
    "emoji 😀🐱🚀 👩\u200d💻 zero\u200bwidth nbsp\u00a0space",
    "&amp; &lt;b&gt; <b>html</b> #hashtag @x $100 50% ~ | \\",
    "<|startoftext|> literal special tokens <|endoftext|> <|ENDOFTEXT|> !!!",
    "e\u0301 combining vs é, ﬁ ligature ｆｕｌｌｗｉｄｔｈ \u0345 \u017f",
    "control\u0007char \u0000 null \ufffd tab\tnew\nline\r\n",
    "123 4567 3.14159 1,000,000 2nd 3rd ١٢٣ ⅷ",
    " ".join(["word"] * 90),
    "supercalifragilisticexpialidocious" * 6,
]


def tokenizer_seeds():
    prompts = list(PROMPTS)
    path = os.path.join(SHARED, "golden/tokenizer_prompts.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            prompts += [p for p in json.load(f) if p not in prompts][:20]
    for i, p in enumerate(prompts):
        # First byte: low bit 0 = SD 1.x tokenizer, 1 = SD 2.x (pad "!").
        write("fuzz_tokenizer", f"prompt_{i:02d}", bytes([i & 1]) + p.encode("utf-8", "surrogatepass"))
    write("fuzz_tokenizer", "invalid_utf8", b"\x00ab\xff\xc3(\xe2\x82\xf0\x9f\x98 \xed\xa0\x80 end")


# ------------------------------------------------------------------------ png
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def png(width, height, bit_depth, color_type, rows, interlace=0, extra=(), extra_after=(), plte=None,
        trns=None, iend=True):
    """rows: raw filtered scanline bytes (filter byte included), already laid out per pass."""
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace))
    for c in extra:
        out += c
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(rows, 9))
    for c in extra_after:
        out += c
    if iend:
        out += chunk(b"IEND", b"")
    return out


CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def scanlines(width, height, bit_depth, color_type, value=lambda x, y, c: (x * 37 + y * 11 + c * 101)):
    bits = bit_depth * CHANNELS[color_type]
    out = b""
    for y in range(height):
        samples = [value(x, y, c) & ((1 << bit_depth) - 1) for x in range(width) for c in range(CHANNELS[color_type])]
        if bit_depth == 16:
            row = b"".join(struct.pack(">H", s) for s in samples)
        elif bit_depth == 8:
            row = bytes(samples)
        else:
            acc, n, row = 0, 0, bytearray()
            for s in samples:
                acc = (acc << bit_depth) | s
                n += bit_depth
                if n == 8:
                    row.append(acc)
                    acc, n = 0, 0
            if n:
                row.append(acc << (8 - n))
            row = bytes(row)
        assert len(row) == (width * bits + 7) // 8
        out += b"\x00" + row
    return out


def adam7(width, height, bit_depth, color_type):
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    out = b""
    for x0, y0, dx, dy in passes:
        w = max(0, (width - x0 + dx - 1) // dx)
        h = max(0, (height - y0 + dy - 1) // dy)
        if w and h:
            out += scanlines(w, h, bit_depth, color_type, lambda x, y, c: (x * 5 + y * 3 + c))
    return out


def text_chunk(key, value):
    return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def ztxt_chunk(key, value):
    return chunk(b"zTXt", key.encode("latin-1") + b"\0\0" + zlib.compress(value.encode("latin-1")))


def itxt_chunk(key, value, compressed=False):
    data = value.encode("utf-8")
    if compressed:
        data = zlib.compress(data)
    return chunk(b"iTXt", key.encode("latin-1") + b"\0" + bytes([1 if compressed else 0, 0]) + b"\0\0" + data)


def png_seeds():
    for ct, depths in {0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]}.items():
        for bd in depths:
            w, h = 7, 5
            plte = bytes(range(3 * 6)) if ct == 3 else None  # 6 entries: higher indices read as black
            write("fuzz_png", f"ct{ct}_bd{bd}.png", png(w, h, bd, ct, scanlines(w, h, bd, ct), plte=plte))
    write("fuzz_png", "interlaced_rgb.png", png(9, 9, 8, 2, adam7(9, 9, 8, 2), interlace=1))
    write("fuzz_png", "interlaced_gray2.png", png(5, 3, 2, 0, adam7(5, 3, 2, 0), interlace=1))
    write("fuzz_png", "palette_trns.png",
          png(4, 4, 8, 3, scanlines(4, 4, 8, 3, lambda x, y, c: x + 4 * y), plte=bytes(range(48)),
              trns=bytes([0, 128, 255])))
    write("fuzz_png", "gray_trns.png", png(3, 3, 8, 0, scanlines(3, 3, 8, 0), trns=b"\x00\x10"))
    mask = scanlines(16, 16, 8, 0, lambda x, y, c: 255 if 4 <= x < 12 and 4 <= y < 12 else 0)
    write("fuzz_png", "mask_16x16.png", png(16, 16, 8, 0, mask))
    write("fuzz_png", "mask_1bit.png", png(16, 16, 1, 0, scanlines(16, 16, 1, 0, lambda x, y, c: (x >> 2) ^ (y >> 2))))
    params = ("a red fox in the snow\nNegative prompt: blurry\n"
              "Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 8x8, Model: sd15")
    write("fuzz_png", "a1111_text.png", png(8, 8, 8, 2, scanlines(8, 8, 8, 2), extra=[text_chunk("parameters", params)]))
    write("fuzz_png", "itxt_ztxt.png", png(4, 4, 8, 6, scanlines(4, 4, 8, 6),
                                           extra=[itxt_chunk("parameters", "renard roux ❄ 🦊"),
                                                  ztxt_chunk("Comment", "zipped é")],
                                           extra_after=[itxt_chunk("after", "trailing, compressed", True)]))
    filters = b""
    for y in range(4):  # every filter type once (and Paeth twice)
        filters += bytes([y + 1]) + bytes((x * 7 + y) & 0xff for x in range(3 * 6))
    write("fuzz_png", "filters.png", png(6, 4, 8, 2, filters))
    write("fuzz_png", "no_iend.png", png(3, 2, 8, 2, scanlines(3, 2, 8, 2), iend=False))
    write("fuzz_png", "truncated.png", png(3, 2, 8, 2, scanlines(3, 2, 8, 2))[:45])
    write("fuzz_png", "signature_only.png", b"\x89PNG\r\n\x1a\n")


def regression_seeds():
    """Inputs that crashed a target once (see the unit tests named in each comment).

    All go to regressions/<target>/, which scripts/fuzz replays verbatim before
    fuzzing; the small ones are seeds in corpus/ too. Large ones stay out of
    corpus/: libFuzzer's default -max_len is the largest seed, and a 24 KB seed
    made fuzz_submit_request mutate 24 KB inputs, at ~470 instead of ~8800 runs/s.
    """
    # coordinator/sweep_spec.cc YamlToJson recursed forever on a cyclic alias
    # (SweepSpecTextTest.RecursiveYamlAliasIsAnErrorNotAStackOverflow).
    self_alias = "yname: &a [*a]\nmodel: m\nprompt: x\nseed: 1\n"
    write("fuzz_sweep_spec", "yaml-self-alias", self_alias, REGRESSIONS)
    write("fuzz_sweep_spec", "regression-yaml-self-alias", self_alias)
    # coordinator/sweep_spec.cc QuoteJson dumped a deeply nested value recursively
    # (SweepSpecJsonTest.DeeplyNestedValueIsAnErrorNotAStackOverflow). 12000 levels
    # overflow the stack of the ASan build; a GCC -O2 build needs about 100000.
    depth = 12000
    write("fuzz_submit_request", "deep-nesting",
          '{"name": ' + "[" * depth + "]" * depth + ', "model": "m", "prompt": "x", "seed": 1}', REGRESSIONS)


def main():
    regression_seeds()
    sweep_seeds()
    safetensors_seeds()
    tokenizer_seeds()
    png_seeds()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f)) for f in files)
        print(f"{target}: {len(files)} files, {size} bytes")


if __name__ == "__main__":
    main()
