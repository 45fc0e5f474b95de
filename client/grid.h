// Contact sheets: a labelled grid of a sweep's images, e.g. seed by guidance,
// built from the sweep folder (metadata.jsonl + PNGs) alone, so it works on
// the coordinator's output root and on a folder fetched with `sdfarm get`.
//
//   GridOptions opts;                     // rows: seed, columns: guidance_scale
//   ASSIGN_OR_RETURN(GridSummary g, MakeGrid("out/fox-study", opts));
//   // g.files == {"out/fox-study/grid.png"}
//
// Axes are metadata.jsonl keys (seed, guidance_scale, steps, sampler, prompt,
// negative_prompt, width, height, ...; "guidance", "cfg" are accepted for
// guidance_scale). Values are ordered numerically when every value is a
// number, else as strings. When parameters other than the two axes vary
// (several prompts, say), one sheet is made per combination of them:
// grid-001.png, grid-002.png, ... each titled with its fixed values; with a
// single combination the sheet is grid.png. Labels are drawn with a built-in
// bitmap font (ASCII; other characters are shown as '?'). A cell whose image
// is missing (failed, not yet rendered) is drawn grey. Cells larger than
// max_cell pixels on a side are downscaled (box filter). Sheets are written
// atomically into the sweep folder (or out_dir when set).
#ifndef SDFARM_CLIENT_GRID_H_
#define SDFARM_CLIENT_GRID_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sdfarm::client {

struct GridOptions {
  std::string rows = "seed";
  std::string cols = "guidance_scale";
  int max_cell = 256;       // pixels; 16..4096
  std::string out_dir;      // empty: the sweep folder
};

struct GridSummary {
  std::vector<std::string> files;  // the sheets written, full paths
  int images = 0;                  // cells filled
  int missing = 0;                 // cells drawn grey
};

// NotFound when the folder has no metadata.jsonl; InvalidArgument when an
// axis is not a metadata key, both axes are the same, or options are out of
// range; DataLoss when a row or an image cannot be read.
absl::StatusOr<GridSummary> MakeGrid(const std::string& sweep_dir, const GridOptions& options);

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_GRID_H_
