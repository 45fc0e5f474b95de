#include "worker/engine/sha256.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "tests/engine/golden.h"

namespace sdfarm::engine {
namespace {

std::string Hex(std::string_view s) {
  Sha256 h;
  h.Update(s);
  return h.HexDigest();
}

TEST(Sha256Test, FipsVectors) {
  EXPECT_EQ(Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million;  // a million 'a', fed in uneven pieces
  const std::string chunk(977, 'a');
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, chunk.size());
    million.Update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(million.HexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, FileAndAddnetHash) {
  const std::string path = testing::MakeTempDir() + "/x.safetensors";
  // A safetensors-shaped file: 8-byte little-endian header length, header, data.
  const std::string header = "{}      ";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  bytes += header + "abc";
  std::ofstream(path, std::ios::binary) << bytes;
  auto whole = Sha256File(path);
  ASSERT_OK(whole);
  EXPECT_EQ(*whole, Hex(bytes));
  auto addnet = Sha256File(path, /*addnet=*/true);
  ASSERT_OK(addnet);
  EXPECT_EQ(*addnet, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");  // sha256("abc")
  EXPECT_FALSE(Sha256File(path + ".missing").ok());
}

}  // namespace
}  // namespace sdfarm::engine
