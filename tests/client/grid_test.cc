// Contact sheets (client/grid.h) built from real sweep folders: solid-colour
// PNGs plus metadata.jsonl. Cells are located by their colours, so the tests
// check where each image lands without depending on the exact label layout.
#include "client/grid.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/engine/png_io.h"

namespace sdfarm::client {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using Rgb = std::array<uint8_t, 3>;

constexpr Rgb kWhite = {255, 255, 255};
constexpr Rgb kGrey = {128, 128, 128};

struct Box {
  int x0 = 1 << 30, y0 = 1 << 30, x1 = -1, y1 = -1;  // inclusive; empty when x1 < 0
  int64_t count = 0;
  int w() const { return x1 - x0 + 1; }
  int h() const { return y1 - y0 + 1; }
  double cx() const { return (x0 + x1) / 2.0; }
  double cy() const { return (y0 + y1) / 2.0; }
};

Rgb Pixel(const engine::Image& img, int x, int y) {
  const uint8_t* p = &img.pixels[(static_cast<size_t>(y) * img.width + x) * 3];
  return {p[0], p[1], p[2]};
}

// Where a colour occurs in the sheet.
Box Find(const engine::Image& img, Rgb c) {
  Box b;
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) {
      if (Pixel(img, x, y) != c) continue;
      b.x0 = std::min(b.x0, x);
      b.y0 = std::min(b.y0, y);
      b.x1 = std::max(b.x1, x);
      b.y1 = std::max(b.y1, y);
      ++b.count;
    }
  }
  return b;
}

// Text is black on white; "dark" leaves room for nothing but ink.
int64_t DarkPixels(const engine::Image& img, int x0, int y0, int x1, int y1) {
  int64_t n = 0;
  for (int y = std::max(0, y0); y < std::min(img.height, y1); ++y) {
    for (int x = std::max(0, x0); x < std::min(img.width, x1); ++x) {
      Rgb p = Pixel(img, x, y);
      if (p[0] < 64 && p[1] < 64 && p[2] < 64) ++n;
    }
  }
  return n;
}

engine::Image Solid(int w, int h, Rgb c) {
  engine::Image img;
  img.width = w;
  img.height = h;
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    img.pixels[i] = c[0];
    img.pixels[i + 1] = c[1];
    img.pixels[i + 2] = c[2];
  }
  return img;
}

engine::Image ReadSheet(const std::string& path) {
  engine::StatusOr<engine::Image> img = engine::ReadPng(path, 3);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
  return img.ok() ? *img : engine::Image{};
}

std::map<std::string, std::string> SheetText(const std::string& path) {
  auto text = engine::ReadPngText(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  std::map<std::string, std::string> out;
  if (text.ok()) {
    for (auto& [k, v] : *text) out[k] = v;
  }
  return out;
}

class GridTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           absl::StrCat("sdfarm-grid-", info->name(), "-", ::getpid());
    fs::remove_all(dir_);
    fs::remove_all(dir_.string() + ".grids");
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) {
      fs::remove_all(dir_);
      fs::remove_all(dir_.string() + ".grids");
    }
  }

  // A manifest row as the coordinator writes it; bookkeeping differs on every row.
  nlohmann::ordered_json Row(const std::string& file, nlohmann::json seed, nlohmann::json cfg) {
    nlohmann::ordered_json r;
    r["file_name"] = file;
    r["prompt"] = "a fox";
    r["negative_prompt"] = "";
    r["seed"] = seed;
    r["guidance_scale"] = cfg;
    r["steps"] = 30;
    r["sampler"] = "euler_a";
    r["width"] = 32;
    r["height"] = 32;
    r["model"] = "sd15";
    r["model_hash"] = "1a2b3c4d5e";
    r["sweep_id"] = "sw-1";
    r["sweep"] = "fox-study";
    r["item_index"] = next_index_;
    r["job_index"] = next_index_ / 4;
    r["worker"] = absl::StrCat("gpu", next_index_ % 3);
    r["render_seconds"] = 1.5 + next_index_;
    r["parameters"] = absl::StrCat("a fox\nSteps: 30, Seed: ", seed.dump(), ", idx ", next_index_);
    ++next_index_;
    return r;
  }

  // Writes the image (when given) and queues its row.
  void Add(nlohmann::ordered_json row, const engine::Image* img) {
    if (img != nullptr) {
      // EncodePng and a plain write: WritePngAtomic fsyncs, too slow for 10,000 files.
      engine::StatusOr<std::string> png = engine::EncodePng(*img, {}, 1);
      ASSERT_TRUE(png.ok()) << png.status().ToString();
      std::ofstream(dir_ / row["file_name"].get<std::string>(), std::ios::binary) << *png;
    }
    lines_.push_back(row.dump());
  }
  void AddSolid(nlohmann::ordered_json row, int w, int h, Rgb c) {
    engine::Image img = Solid(w, h, c);
    Add(std::move(row), &img);
  }

  void WriteManifest() {
    std::ofstream out(dir_ / "metadata.jsonl", std::ios::binary | std::ios::trunc);
    for (const std::string& l : lines_) out << l << "\n";
  }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  // Where sheets go by default: beside the sweep folder, not in the dataset.
  std::string SheetPath(const std::string& name) const { return (fs::path(dir_.string() + ".grids") / name).string(); }

  fs::path dir_;
  std::vector<std::string> lines_;
  int next_index_ = 0;
};

TEST_F(GridTest, SeedByCfgPutsEveryImageInItsCell) {
  // Seeds 10, 2, 1 (written in that order) by guidance 7.5, 4.
  const std::vector<int> seeds = {10, 2, 1};
  const std::vector<double> cfgs = {7.5, 4};
  std::map<std::pair<int, double>, Rgb> colour;
  int n = 0;
  for (int seed : seeds) {
    for (double cfg : cfgs) {
      Rgb c = {static_cast<uint8_t>(40 + 30 * n), static_cast<uint8_t>(200 - 25 * n),
               static_cast<uint8_t>(n % 2 ? 30 : 220)};
      colour[{seed, cfg}] = c;
      AddSolid(Row(absl::StrCat("img", n, ".png"), seed, cfg), 32, 32, c);
      ++n;
    }
  }
  WriteManifest();

  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->files, ::testing::ElementsAre(SheetPath("grid.png")));
  // The sweep folder is an imagefolder dataset: no image without a metadata row lands in it.
  EXPECT_FALSE(fs::exists(Path("grid.png")));
  EXPECT_EQ(DefaultGridDir(dir_.string() + "/"), dir_.string() + ".grids");
  EXPECT_EQ(g->images, 6);
  EXPECT_EQ(g->missing, 0);
  EXPECT_FALSE(fs::exists(SheetPath("grid.png.tmp")));

  engine::Image sheet = ReadSheet(SheetPath("grid.png"));
  // Every image appears whole and unscaled, once.
  std::map<std::pair<int, double>, Box> box;
  for (auto& [key, c] : colour) {
    Box b = Find(sheet, c);
    ASSERT_EQ(b.count, 32 * 32) << key.first << "/" << key.second;
    EXPECT_EQ(b.w(), 32);
    EXPECT_EQ(b.h(), 32);
    EXPECT_EQ(Pixel(sheet, static_cast<int>(b.cx()), static_cast<int>(b.cy())), c);
    box[key] = b;
  }
  // Rows: seeds 1, 2, 10 top to bottom (numeric, not "1" < "10" < "2").
  // Columns: cfg 4 then 7.5.
  const std::vector<int> row_order = {1, 2, 10};
  const std::vector<double> col_order = {4, 7.5};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 2; ++c) {
      const Box& b = box[{row_order[r], col_order[c]}];
      const Box& first_col = box[{row_order[r], col_order[0]}];
      const Box& first_row = box[{row_order[0], col_order[c]}];
      EXPECT_EQ(b.y0, first_col.y0) << "same row, same top";
      EXPECT_EQ(b.x0, first_row.x0) << "same column, same left";
      if (r > 0) {
        const Box& above = box[{row_order[r - 1], col_order[c]}];
        EXPECT_GT(b.y0, above.y1);
        EXPECT_LE(b.y0 - above.y1 - 1, 16) << "a small gap between rows";
      }
      if (c > 0) {
        const Box& left = box[{row_order[r], col_order[c - 1]}];
        EXPECT_GT(b.x0, left.x1);
        EXPECT_LE(b.x0 - left.x1 - 1, 16) << "a small gap between columns";
      }
    }
  }
  // The sheet: the 3 x 2 cells plus label bands and margins, no more than needed.
  const Box& top_left = box[{1, 4.0}];
  const Box& bottom_right = box[{10, 7.5}];
  EXPECT_GT(top_left.x0, 0);
  EXPECT_GT(top_left.y0, 0);
  EXPECT_LT(bottom_right.x1, sheet.width - 1);
  EXPECT_LT(bottom_right.y1, sheet.height - 1);
  EXPECT_LT(sheet.width, 2 * 32 + 400);
  EXPECT_LT(sheet.height, 3 * 32 + 120);
  // Everything that is not an image is white background or black ink.
  int64_t other = 0;
  for (int y = 0; y < sheet.height; ++y) {
    for (int x = 0; x < sheet.width; ++x) {
      Rgb p = Pixel(sheet, x, y);
      bool in_cell = false;
      for (auto& [key, b] : box) in_cell |= x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1;
      if (!in_cell && p != kWhite && p != Rgb{0, 0, 0}) ++other;
    }
  }
  EXPECT_EQ(other, 0);

  // The labels, in order, with short names and shortest numbers.
  auto text = SheetText(SheetPath("grid.png"));
  EXPECT_EQ(text["Rows"], "seed 1\nseed 2\nseed 10");
  EXPECT_EQ(text["Columns"], "cfg 4\ncfg 7.5");
  EXPECT_EQ(text["Title"], "fox-study | prompt: \"a fox\" | model sd15 | steps 30 | euler_a | 32x32");
}

TEST_F(GridTest, AxesCanBeAnyParameterAndAliases) {
  // Columns by sampler (strings, alphabetical), rows by guidance via "cfg";
  // guidance values 10, 7.5, 1e-05: numeric order.
  const std::vector<std::string> samplers = {"lms", "ddim", "euler_a"};
  const std::vector<double> cfgs = {10, 7.5, 1e-05};
  std::map<std::pair<std::string, double>, Rgb> colour;
  int n = 0;
  for (const std::string& s : samplers) {
    for (double cfg : cfgs) {
      auto row = Row(absl::StrCat("i", n, ".png"), 42, cfg);
      row["sampler"] = s;
      Rgb c = {static_cast<uint8_t>(20 * n + 10), 90, static_cast<uint8_t>(250 - 20 * n)};
      colour[{s, cfg}] = c;
      AddSolid(row, 20, 20, c);
      ++n;
    }
  }
  WriteManifest();
  GridOptions opts;
  opts.rows = "cfg";
  opts.cols = "sampler";
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->files.size(), 1u);
  engine::Image sheet = ReadSheet(g->files[0]);
  const std::vector<std::string> col_order = {"ddim", "euler_a", "lms"};
  const std::vector<double> row_order = {1e-05, 7.5, 10};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      Box b = Find(sheet, colour[{col_order[c], row_order[r]}]);
      ASSERT_EQ(b.count, 400);
      if (c > 0) {
        EXPECT_GT(b.x0, Find(sheet, colour[{col_order[c - 1], row_order[r]}]).x1);
      }
      if (r > 0) {
        EXPECT_GT(b.y0, Find(sheet, colour[{col_order[c], row_order[r - 1]}]).y1);
      }
    }
  }
  auto text = SheetText(g->files[0]);
  EXPECT_EQ(text["Rows"], "cfg 1e-05\ncfg 7.5\ncfg 10");
  EXPECT_EQ(text["Columns"], "sampler ddim\nsampler euler_a\nsampler lms");
  EXPECT_THAT(text["Title"], HasSubstr("seed 42"));
  EXPECT_THAT(text["Title"], Not(HasSubstr("euler_a")));
}

// SDXL rows: original_size ("WxH") and crop_top_left ("TOP,LEFT") strings as
// axes, in numeric order of their numbers, not as text ("1024x1024" < "512x512").
TEST_F(GridTest, SdxlSizeStringsAreAxesInNumericOrder) {
  const std::vector<std::string> sizes = {"1024x1024", "512x512", "768x768", "2048x1024"};
  const std::vector<std::string> crops = {"64,0", "0,0", "128,64"};
  std::map<std::pair<std::string, std::string>, Rgb> colour;
  int n = 0;
  for (const std::string& size : sizes) {
    for (const std::string& crop : crops) {
      auto row = Row(absl::StrCat("xl", n, ".png"), 42, 7.5);
      row["original_size"] = size;
      row["crop_top_left"] = crop;
      const Rgb c{static_cast<uint8_t>(20 + 15 * n), 90, static_cast<uint8_t>(200 - 10 * n)};
      colour[{size, crop}] = c;
      AddSolid(row, 16, 16, c);
      ++n;
    }
  }
  WriteManifest();
  GridOptions opts;
  opts.rows = "original_size";
  opts.cols = "crop_top_left";
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->files.size(), 1u);
  auto text = SheetText(g->files[0]);
  EXPECT_EQ(text["Rows"],
            "original_size 512x512\noriginal_size 768x768\noriginal_size 1024x1024\noriginal_size 2048x1024");
  EXPECT_EQ(text["Columns"], "crop_top_left 0,0\ncrop_top_left 64,0\ncrop_top_left 128,64");
  engine::Image sheet = ReadSheet(g->files[0]);
  const Box small = Find(sheet, colour[{"512x512", "0,0"}]);
  const Box large = Find(sheet, colour[{"1024x1024", "128,64"}]);
  ASSERT_EQ(small.count, 16 * 16);
  ASSERT_EQ(large.count, 16 * 16);
  EXPECT_LT(small.y1, large.y0);
  EXPECT_LT(small.x1, large.x0);
}

TEST_F(GridTest, OneSheetPerPromptTitledWithIt) {
  // Two prompts x 2 seeds x 2 cfgs: two sheets, sorted by prompt.
  std::map<std::string, Rgb> prompt_colour = {{"b fox", {250, 10, 10}}, {"a cat", {10, 10, 250}}};
  int n = 0;
  for (auto& [prompt, c] : prompt_colour) {
    for (int seed : {1, 2}) {
      for (double cfg : {4.0, 8.0}) {
        auto row = Row(absl::StrCat("p", n++, ".png"), seed, cfg);
        row["prompt"] = prompt;
        AddSolid(row, 16, 16, c);
      }
    }
  }
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->files, ::testing::ElementsAre(SheetPath("grid-001.png"), SheetPath("grid-002.png")));
  EXPECT_FALSE(fs::exists(SheetPath("grid.png")));
  EXPECT_EQ(g->images, 8);
  EXPECT_EQ(g->missing, 0);

  engine::Image first = ReadSheet(g->files[0]), second = ReadSheet(g->files[1]);
  EXPECT_EQ(Find(first, prompt_colour["a cat"]).count, 4 * 16 * 16);
  EXPECT_EQ(Find(first, prompt_colour["b fox"]).count, 0);
  EXPECT_EQ(Find(second, prompt_colour["b fox"]).count, 4 * 16 * 16);
  EXPECT_THAT(SheetText(g->files[0])["Title"], HasSubstr("prompt: \"a cat\""));
  EXPECT_THAT(SheetText(g->files[1])["Title"], HasSubstr("prompt: \"b fox\""));

  // The title bands differ (the prompt is drawn), the cells line up.
  Box cells = Find(first, prompt_colour["a cat"]);
  ASSERT_EQ(first.width, second.width);
  ASSERT_EQ(first.height, second.height);
  EXPECT_EQ(cells.y0, Find(second, prompt_colour["b fox"]).y0);
  bool title_differs = false;
  for (int y = 0; y < cells.y0 && !title_differs; ++y) {
    for (int x = 0; x < first.width; ++x) title_differs |= Pixel(first, x, y) != Pixel(second, x, y);
  }
  EXPECT_TRUE(title_differs);
}

TEST_F(GridTest, MissingFileIsAGreyCell) {
  const Rgb a = {200, 30, 30}, b = {30, 200, 30}, d = {30, 30, 200};
  AddSolid(Row("a.png", 1, 4), 24, 24, a);
  AddSolid(Row("b.png", 1, 8), 24, 24, b);
  Add(Row("c.png", 2, 4), nullptr);  // recorded, but the file is gone
  AddSolid(Row("d.png", 2, 8), 24, 24, d);
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 3);
  EXPECT_EQ(g->missing, 1);
  engine::Image sheet = ReadSheet(g->files[0]);
  Box grey = Find(sheet, kGrey);
  EXPECT_EQ(grey.count, 24 * 24);
  EXPECT_EQ(grey.w(), 24);
  // Row of seed 2 (with d), column of cfg 4 (with a).
  EXPECT_EQ(grey.y0, Find(sheet, d).y0);
  EXPECT_EQ(grey.x0, Find(sheet, a).x0);
}

TEST_F(GridTest, UnrecordedCombinationIsAGreyCell) {
  // A failed image has no row at all: its cell is still on the sheet.
  const Rgb a = {200, 30, 30}, b = {30, 200, 30}, d = {30, 30, 200};
  AddSolid(Row("a.png", 1, 4), 24, 24, a);
  AddSolid(Row("b.png", 1, 8), 24, 24, b);
  AddSolid(Row("d.png", 2, 8), 24, 24, d);
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 3);
  EXPECT_EQ(g->missing, 1);
  engine::Image sheet = ReadSheet(g->files[0]);
  Box grey = Find(sheet, kGrey);
  EXPECT_EQ(grey.count, 24 * 24);
  EXPECT_EQ(grey.y0, Find(sheet, d).y0);
  EXPECT_EQ(grey.x0, Find(sheet, a).x0);
}

TEST_F(GridTest, LargeImagesAreDownscaledAndCentred) {
  const Rgb big = {220, 40, 40}, half = {40, 220, 40}, wide = {40, 40, 220}, tall = {220, 220, 40};
  AddSolid(Row("big.png", 1, 4), 512, 512, big);     // factor 4 -> 128 x 128
  AddSolid(Row("half.png", 2, 4), 256, 256, half);   // factor 2 -> 128 x 128
  AddSolid(Row("wide.png", 1, 8), 64, 32, wide);     // fits: 64 x 32
  AddSolid(Row("tall.png", 2, 8), 100, 300, tall);   // factor 3 -> 34 x 100
  WriteManifest();
  GridOptions opts;
  opts.max_cell = 128;
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 4);
  engine::Image sheet = ReadSheet(g->files[0]);
  Box b = Find(sheet, big), h = Find(sheet, half), w = Find(sheet, wide), t = Find(sheet, tall);
  EXPECT_EQ(b.w(), 128);
  EXPECT_EQ(b.h(), 128);
  EXPECT_EQ(b.count, 128 * 128);
  EXPECT_EQ(h.count, 128 * 128);
  EXPECT_EQ(w.w(), 64);
  EXPECT_EQ(w.h(), 32);
  EXPECT_EQ(w.count, 64 * 32);
  EXPECT_EQ(t.w(), 34);
  EXPECT_EQ(t.h(), 100);
  // Cells are 128 x 128; smaller images sit in the middle of theirs.
  EXPECT_NEAR(w.cy(), b.cy(), 1.0);
  EXPECT_NEAR(t.cx(), w.cx(), 1.0);
  EXPECT_NEAR(t.cy(), h.cy(), 1.0);
  EXPECT_GT(w.x0, b.x1 + 32);
  EXPECT_LT(sheet.width, 2 * 128 + 400);
}

TEST_F(GridTest, SheetTooLargeForAPngShrinksItsCells) {
  // 70 columns of 512 px images at max_cell 256 would be ~18,500 px wide,
  // over the 16,384 a PNG may have: the cells shrink (integer factor 3 here).
  engine::Image img = Solid(512, 512, {0, 0, 0});
  for (int c = 0; c < 70; ++c) {
    for (int r = 0; r < 2; ++r) {
      const uint8_t v = static_cast<uint8_t>(3 * c + 1);
      std::fill(img.pixels.begin(), img.pixels.end(), v);
      for (size_t i = 0; i < img.pixels.size(); i += 3) img.pixels[i + 2] = static_cast<uint8_t>(100 + r);
      Add(Row(absl::StrCat("w", c, "-", r, ".png"), r, c), &img);
    }
  }
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 140);
  engine::Image sheet = ReadSheet(g->files[0]);
  EXPECT_LE(sheet.width, engine::kMaxPngDimension);
  for (Rgb c : {Rgb{1, 1, 100}, Rgb{208, 208, 101}}) {
    Box b = Find(sheet, c);
    EXPECT_EQ(b.w(), 171);  // ceil(512 / 3)
    EXPECT_EQ(b.count, 171 * 171);
  }
}

TEST_F(GridTest, TinyAndThinImages) {
  AddSolid(Row("dot.png", 1, 4), 1, 1, {250, 0, 0});
  AddSolid(Row("line.png", 2, 4), 2000, 3, {0, 250, 0});  // factor 125 -> 16 x 1
  WriteManifest();
  GridOptions opts;
  opts.max_cell = 16;
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 2);
  engine::Image sheet = ReadSheet(g->files[0]);
  EXPECT_EQ(Find(sheet, {250, 0, 0}).count, 1);
  Box line = Find(sheet, {0, 250, 0});
  EXPECT_EQ(line.w(), 16);
  EXPECT_EQ(line.h(), 1);
}

TEST_F(GridTest, DownscalingAveragesBoxes) {
  // A red/blue pixel checkerboard shrunk 4x is purple.
  engine::Image checker = Solid(64, 64, {0, 0, 0});
  for (int y = 0; y < 64; ++y) {
    for (int x = 0; x < 64; ++x) {
      uint8_t* p = &checker.pixels[(static_cast<size_t>(y) * 64 + x) * 3];
      p[0] = (x + y) % 2 ? 255 : 0;
      p[2] = (x + y) % 2 ? 0 : 255;
    }
  }
  Add(Row("checker.png", 1, 4), &checker);
  WriteManifest();
  GridOptions opts;
  opts.max_cell = 16;
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  engine::Image sheet = ReadSheet(g->files[0]);
  Box purple = Find(sheet, {128, 0, 128});
  EXPECT_EQ(purple.count, 16 * 16);
  EXPECT_EQ(purple.w(), 16);
}

TEST_F(GridTest, LabelsAreDrawnOutsideTheCells) {
  const Rgb red = {230, 20, 20}, green = {20, 230, 20}, blue = {20, 20, 230};
  AddSolid(Row("w.png", 1, 4), 48, 48, kWhite);
  AddSolid(Row("r.png", 1, 8), 48, 48, red);
  AddSolid(Row("g.png", 2, 4), 48, 48, green);
  AddSolid(Row("b.png", 2, 8), 48, 48, blue);
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  engine::Image sheet = ReadSheet(g->files[0]);
  Box r = Find(sheet, red), gr = Find(sheet, green), b = Find(sheet, blue);
  ASSERT_EQ(r.count, 48 * 48);
  ASSERT_EQ(gr.count, 48 * 48);
  ASSERT_EQ(b.count, 48 * 48);
  // The white image's cell: green's column, red's row. Nothing drawn over it.
  EXPECT_EQ(DarkPixels(sheet, gr.x0, r.y0, gr.x1 + 1, r.y1 + 1), 0);
  for (int y = r.y0; y <= r.y1; ++y) {
    for (int x = gr.x0; x <= gr.x1; ++x) ASSERT_EQ(Pixel(sheet, x, y), kWhite) << x << "," << y;
  }
  // Row labels left of each row, column headers above each column, a title on top.
  EXPECT_GT(DarkPixels(sheet, 0, r.y0, gr.x0, r.y1 + 1), 10);
  EXPECT_GT(DarkPixels(sheet, 0, gr.y0, gr.x0, gr.y1 + 1), 10);
  EXPECT_GT(DarkPixels(sheet, gr.x0, 0, gr.x1 + 1, r.y0), 10);
  EXPECT_GT(DarkPixels(sheet, b.x0, 0, b.x1 + 1, r.y0), 10);
  EXPECT_GT(DarkPixels(sheet, 0, 0, sheet.width, 12), 10) << "title";
}

TEST_F(GridTest, LongAndNonAsciiLabelsAreCut) {
  const std::string long_prompt =
      "a very long prompt about a red fox in the snow at dawn, highly detailed, 8k, trending, "
      "cinematic lighting, by a famous painter, masterpiece, best quality, intricate";
  auto r1 = Row("a.png", 1, 4);
  r1["prompt"] = long_prompt;
  AddSolid(r1, 32, 32, {200, 0, 0});
  auto r2 = Row("b.png", 1, 4);
  r2["prompt"] = "renard \xc3\xa9 \xe7\x8b\x90 dans\tla neige";
  AddSolid(r2, 32, 32, {0, 200, 0});
  WriteManifest();
  GridOptions opts;
  opts.rows = "prompt";
  opts.cols = "seed";
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  engine::Image sheet = ReadSheet(g->files[0]);
  EXPECT_LT(sheet.width, 400) << "the label band is capped";
  EXPECT_EQ(Find(sheet, {200, 0, 0}).count, 32 * 32);
  auto text = SheetText(g->files[0]);
  EXPECT_EQ(text["Rows"], "prompt \"a very long prompt about a red fox in the snow at dawn, highly detailed, 8k, "
                          "trending, cinematic lighting, by a famous painter, masterpiece, best quality, "
                          "intricate\"\nprompt \"renard ? ? dans la neige\"");
}

TEST_F(GridTest, BookkeepingNeverSplitsSheets) {
  // Every row has its own worker, item_index, render_seconds, parameters and
  // even model_hash / sweep_id: still one sheet.
  for (int i = 0; i < 4; ++i) {
    auto row = Row(absl::StrCat("x", i, ".png"), i / 2, 4 + i % 2);
    row["model_hash"] = absl::StrCat("hash", i);
    row["sweep_id"] = absl::StrCat("id", i);
    AddSolid(row, 8, 8, {static_cast<uint8_t>(50 * i), 100, 100});
  }
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->files, ::testing::ElementsAre(SheetPath("grid.png")));
  EXPECT_EQ(g->images, 4);
}

TEST_F(GridTest, RepeatedValuesShowTheFirstRow) {
  AddSolid(Row("first.png", 1, 4), 8, 8, {10, 200, 10});
  AddSolid(Row("again.png", 1, 4), 8, 8, {200, 10, 10});
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images, 1);
  engine::Image sheet = ReadSheet(g->files[0]);
  EXPECT_EQ(Find(sheet, {10, 200, 10}).count, 64);
  EXPECT_EQ(Find(sheet, {200, 10, 10}).count, 0);
}

TEST_F(GridTest, OutDir) {
  AddSolid(Row("a.png", 1, 4), 8, 8, {1, 2, 3});
  WriteManifest();
  GridOptions opts;
  opts.out_dir = (dir_ / "sheets" / "v1").string();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->files, ::testing::ElementsAre((dir_ / "sheets" / "v1" / "grid.png").string()));
  EXPECT_TRUE(fs::exists(g->files[0]));
  EXPECT_FALSE(fs::exists(SheetPath("grid.png")));
}

TEST_F(GridTest, UnknownAxisNamesTheValidKeys) {
  AddSolid(Row("a.png", 1, 4), 8, 8, {1, 2, 3});
  WriteManifest();
  GridOptions opts;
  opts.rows = "colour";
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), opts);
  ASSERT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
  const std::string msg(g.status().message());
  EXPECT_THAT(msg, HasSubstr("colour"));
  for (const char* key : {"seed", "guidance_scale", "prompt", "steps", "sampler", "width"}) {
    EXPECT_THAT(msg, HasSubstr(key));
  }
  EXPECT_THAT(msg, Not(HasSubstr("worker")));
  EXPECT_THAT(msg, Not(HasSubstr("file_name")));

  opts.rows = "worker";  // bookkeeping is not an axis
  EXPECT_EQ(MakeGrid(dir_.string(), opts).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GridTest, BadOptions) {
  AddSolid(Row("a.png", 1, 4), 8, 8, {1, 2, 3});
  WriteManifest();
  GridOptions same;
  same.rows = "cfg";
  same.cols = "guidance_scale";
  EXPECT_EQ(MakeGrid(dir_.string(), same).status().code(), absl::StatusCode::kInvalidArgument);
  for (int max_cell : {0, 15, 4097}) {
    GridOptions o;
    o.max_cell = max_cell;
    EXPECT_EQ(MakeGrid(dir_.string(), o).status().code(), absl::StatusCode::kInvalidArgument) << max_cell;
  }
  GridOptions edge;
  edge.max_cell = 16;
  EXPECT_TRUE(MakeGrid(dir_.string(), edge).ok());
  EXPECT_FALSE(fs::exists(SheetPath("grid.png.tmp")));
}

TEST_F(GridTest, CorruptRowIsDataLossWithItsLine) {
  AddSolid(Row("a.png", 1, 4), 8, 8, {1, 2, 3});
  lines_.push_back("{\"file_name\": \"b.png\", \"seed\": ");
  AddSolid(Row("c.png", 2, 4), 8, 8, {1, 2, 4});
  WriteManifest();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_EQ(g.status().code(), absl::StatusCode::kDataLoss) << g.status();
  EXPECT_THAT(std::string(g.status().message()), HasSubstr("line 2"));

  for (const char* bad : {"[1, 2]", "{\"seed\": 1}", "{\"file_name\": \"../../etc/passwd\", \"seed\": 1}"}) {
    lines_ = {Row("a.png", 1, 4).dump(), "", bad};
    WriteManifest();
    g = MakeGrid(dir_.string(), GridOptions{});
    ASSERT_EQ(g.status().code(), absl::StatusCode::kDataLoss) << bad;
    EXPECT_THAT(std::string(g.status().message()), HasSubstr("line 3")) << bad;
  }
}

TEST_F(GridTest, UnreadablePngIsDataLossWithItsName) {
  AddSolid(Row("a.png", 1, 4), 8, 8, {1, 2, 3});
  Add(Row("junk.png", 2, 4), nullptr);
  WriteManifest();
  { std::ofstream(dir_ / "junk.png") << "this is not a png"; }
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_EQ(g.status().code(), absl::StatusCode::kDataLoss) << g.status();
  EXPECT_THAT(std::string(g.status().message()), HasSubstr("junk.png"));

  // A real PNG cut short: the header reads, the pixels do not.
  engine::StatusOr<std::string> png = engine::EncodePng(Solid(64, 64, {9, 9, 9}), {}, 0);
  ASSERT_TRUE(png.ok());
  { std::ofstream(dir_ / "junk.png", std::ios::binary) << png->substr(0, 60); }
  g = MakeGrid(dir_.string(), GridOptions{});
  ASSERT_EQ(g.status().code(), absl::StatusCode::kDataLoss) << g.status();
  EXPECT_THAT(std::string(g.status().message()), HasSubstr("junk.png"));
}

TEST_F(GridTest, NoManifestIsNotFound) {
  EXPECT_EQ(MakeGrid(dir_.string(), GridOptions{}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(MakeGrid((dir_ / "nope").string(), GridOptions{}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(GridTest, HundredByHundred) {
  // 10,000 small images: one index, no per-cell scans. The test is the time limit.
  int failed = 0;
  for (int r = 0; r < 100; ++r) {
    for (int c = 0; c < 100; ++c) {
      const int i = r * 100 + c;
      if (i % 97 == 5 && i != 9999) {  // a few failed: no row at all
        ++failed;
        continue;
      }
      AddSolid(Row(absl::StrCat("s", i, ".png"), r, 1 + c * 0.5), 64, 64,
               {static_cast<uint8_t>(r * 2), static_cast<uint8_t>(c * 2), 77});
    }
  }
  WriteManifest();
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<GridSummary> g = MakeGrid(dir_.string(), GridOptions{});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->images + g->missing, 100 * 100);
  EXPECT_EQ(g->missing, failed);
  EXPECT_LT(seconds, 60.0);
  engine::Image sheet = ReadSheet(g->files[0]);
  EXPECT_GT(sheet.width, 100 * 64);
  Box corner = Find(sheet, {198, 198, 77});  // row 99, column 99
  EXPECT_EQ(corner.count, 64 * 64);
}

}  // namespace
}  // namespace sdfarm::client
