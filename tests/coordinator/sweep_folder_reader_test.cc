// SweepFolderReader: what `sdfarm get` streams from a sweep folder, never
// through a symbolic link.
#include "coordinator/sweep_folder_reader.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

std::string TempRoot() {
  std::string t = (fs::temp_directory_path() / "sdfarm_reader_XXXXXX").string();
  EXPECT_NE(mkdtemp(t.data()), nullptr);
  return t;
}

struct Piece {
  int64_t offset;
  std::string data;
  bool last;
};

std::vector<Piece> ReadAll(const SweepFolderReader& r, const std::string& name, size_t chunk, absl::Status* status) {
  std::vector<Piece> pieces;
  *status = r.ReadFile(name, chunk, [&](int64_t offset, std::string_view data, bool last) {
    pieces.push_back({offset, std::string(data), last});
    return absl::OkStatus();
  });
  return pieces;
}

TEST(SweepFolderReader, ListsRegularFilesOnlyAndReadsThemInChunks) {
  const std::string root = TempRoot();
  fs::create_directory(root + "/s");
  std::ofstream(root + "/s/b.png") << "0123456789";
  std::ofstream(root + "/s/a.png") << "";
  std::ofstream(root + "/s/c.png") << "0123";
  std::ofstream(root + "/secret") << "secret";
  fs::create_symlink(root + "/secret", root + "/s/d.png");
  fs::create_directory(root + "/s/sub");
  auto r = SweepFolderReader::Open(root + "/s");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->Files(), (std::vector<std::string>{"a.png", "b.png", "c.png"}));

  absl::Status st;
  auto pieces = ReadAll(**r, "b.png", 4, &st);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].data, "0123");
  EXPECT_EQ(pieces[2].offset, 8);
  EXPECT_EQ(pieces[2].data, "89");
  EXPECT_TRUE(pieces[2].last);
  EXPECT_FALSE(pieces[1].last);
  pieces = ReadAll(**r, "c.png", 4, &st);  // exactly one chunk
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_TRUE(pieces[0].last);
  pieces = ReadAll(**r, "a.png", 4, &st);  // empty: one empty last piece
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_TRUE(pieces[0].data.empty() && pieces[0].last);

  // Named directly, a symlink is still not followed.
  pieces = ReadAll(**r, "d.png", 4, &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_TRUE(pieces.empty());
  fs::remove_all(root);
}

TEST(SweepFolderReader, AFolderThatIsASymlinkIsRefused) {
  const std::string root = TempRoot();
  fs::create_directory_symlink("/etc", root + "/s");
  auto r = SweepFolderReader::Open(root + "/s");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_EQ(SweepFolderReader::Open(root + "/missing").status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(root);
}

}  // namespace
}  // namespace sdfarm::coordinator
