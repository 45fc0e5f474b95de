// Contact sheets: a labelled grid of a sweep's images, e.g. seed by guidance,
// built from the sweep folder (metadata.jsonl + PNGs) alone, so it works on
// the coordinator's output root and on a folder fetched with `sdfarm get`.
//
//   GridOptions opts;                     // rows: seed, columns: guidance_scale
//   ASSIGN_OR_RETURN(GridSummary g, MakeGrid("out/fox-study", opts));
//   // g.files == {"out/fox-study.grids/grid.png"}
//
// Axes are metadata.jsonl keys (seed, guidance_scale, steps, sampler, prompt,
// negative_prompt, width, height, and on SDXL rows prompt_2, original_size,
// target_size, crop_top_left, guidance_rescale, ...; "guidance", "cfg" are accepted for
// guidance_scale). Bookkeeping keys (file_name, item_index, job_index, worker,
// render_seconds, parameters, sweep_id, sweep, model_hash) are not axes.
// Values are ordered numerically when every value is a number (1, 2, 10; 7
// and 7.0 are the same value), else as strings whose digit runs compare as
// numbers ("512x512" before "1024x1024"); a row that lacks the key
// comes last, labelled "-". When parameters other than the two axes vary
// (several prompts, say; bookkeeping keys never count), one sheet is made per
// combination of them that occurs: grid-001.png, grid-002.png, ... in value
// order, each titled with its fixed values; with a single combination the
// sheet is grid.png. Every sheet has the same rows and columns: all the
// values the axes take in the whole folder.
//
// Layout: a title band (`fox-study | prompt: "a fox" | steps 30 | euler_a |
// 512x512`, wrapped to at most 3 lines), column headers ("cfg 7.5"), row
// labels ("seed 42") on the left, then the cells with a small gap, black text
// on white. Labels are drawn with a built-in 5x7 bitmap font at 2x when cells
// are at least 128 px, else 1x (ASCII; other characters are shown as '?');
// labels too long for their place end with "..". The labels are also stored
// in the PNG as text chunks "Title", "Rows" and "Columns" (one label per
// line). A cell whose image is missing (failed, so not recorded, or recorded
// but its file is gone) is drawn grey (128, 128, 128). Images larger than
// max_cell pixels on a side are downscaled by an integer factor (box filter);
// cells are as large as the sheet's largest (downscaled) image and smaller
// images are centred in them. If a sheet would exceed the largest PNG
// (engine::kMaxPngDimension a side), its cells are downscaled further.
// When two rows have the same values, the first one in the file is shown.
// Sheets are written atomically into "<sweep folder>.grids" beside the sweep
// folder (or out_dir when set), created if needed, never into the sweep folder
// itself: it is a Hugging Face imagefolder dataset, where an image without a
// metadata.jsonl row breaks load_dataset (datasets < 3.4). The paths
// returned are that folder joined with the sheet's name.
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
  std::string out_dir;      // empty: DefaultGridDir(sweep folder)
};

// "<parent>/<name>.grids" for the sweep folder "<parent>/<name>".
std::string DefaultGridDir(const std::string& sweep_dir);

struct GridSummary {
  std::vector<std::string> files;  // the sheets written, full paths
  int images = 0;                  // cells filled
  int missing = 0;                 // cells drawn grey
};

// NotFound when the folder has no metadata.jsonl (or it has no rows yet);
// InvalidArgument when an axis is not a metadata key (the message lists the
// valid ones), both axes are the same, or options are out of range; DataLoss
// when a row cannot be read (the message has its line number; a file_name
// outside the folder counts as unreadable) or an image cannot be read (the
// message has its path). Errors writing a sheet are passed on as they come.
absl::StatusOr<GridSummary> MakeGrid(const std::string& sweep_dir, const GridOptions& options);

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_GRID_H_
