// Checks a finished sweep's output folder against what the sweep should have
// produced (its SweepExpander): exactly the expected images, each a valid PNG
// whose embedded A1111 parameters equal its metadata.jsonl row and the item
// it was rendered for, one row per image, nothing else left in the folder.
//
//   SweepExpander expander(spec, job_size);
//   SweepFolderCheck c = CheckSweepFolder(farm->output_root() + "/name", expander, "tiny-sd");
//   EXPECT_TRUE(c.ok()) << c.Summary();
#ifndef SDFARM_TESTS_FARM_SWEEP_CHECK_H_
#define SDFARM_TESTS_FARM_SWEEP_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/sweep_expander.h"

namespace sdfarm::testing {

struct SweepFolderCheck {
  int64_t expected = 0;              // images the sweep must have
  int64_t images_found = 0;          // expected PNGs present on disk
  int64_t manifest_rows = 0;         // rows in metadata.jsonl
  int64_t duplicate_rows = 0;        // rows naming a file an earlier row named
  int64_t unreadable_rows = 0;       // lines that are not a JSON object with a file_name
  int64_t missing = 0;               // expected images without a PNG or without a row
  int64_t unexpected = 0;            // PNGs or rows the sweep does not have
  int64_t invalid_pngs = 0;          // does not decode, or has no parameters chunk
  int64_t parameter_mismatches = 0;  // PNG vs row vs expected item
  int64_t leftover_files = 0;        // temporary or other stray files
  bool sweep_json = false;           // sweep.json present
  std::vector<std::string> problems;  // the first few, readable

  bool ok() const {
    return images_found == expected && manifest_rows == expected && duplicate_rows == 0 && unreadable_rows == 0 &&
           missing == 0 && unexpected == 0 && invalid_pngs == 0 && parameter_mismatches == 0 &&
           leftover_files == 0 && sweep_json;
  }
  std::string Summary() const;
};

// `model`: the sweep's model name, as each row must carry it.
SweepFolderCheck CheckSweepFolder(const std::string& dir, const coordinator::SweepExpander& expander,
                                  const std::string& model);

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_FARM_SWEEP_CHECK_H_
