// The size of a sweep that names none (see default_size.h).
#include "coordinator/default_size.h"

#include "absl/strings/str_cat.h"

namespace sdfarm::coordinator {
namespace {

std::string SizeText(const Size& s) { return absl::StrCat(s.width, "x", s.height); }

}  // namespace

std::string FillDefaultSize(SweepSpec* spec, const SweepSpec* earlier, const std::vector<Size>& native) {
  if (!spec->size_from_model) return "";
  spec->size_from_model = false;
  if (earlier != nullptr && earlier->sizes.size() == 1) {
    SweepSpec same = *spec;
    same.sizes = earlier->sizes;
    if (same == *earlier) {
      spec->sizes = earlier->sizes;
      return absl::StrCat("size ", SizeText(spec->sizes[0]), ": the size sweep ", spec->name,
                          " was submitted with (the spec names no size)");
    }
  }
  for (const Size& s : native) {
    if (s.width <= 0 || s.height <= 0) continue;
    spec->sizes = {s};
    return absl::StrCat("size ", SizeText(s), ": model ", spec->model,
                        "'s own size, as its live workers report (the spec names no size)");
  }
  spec->sizes = {Size{512, 512}};
  return absl::StrCat("size 512x512: the spec names no size and no live worker of model ", spec->model,
                      " has reported the model's own size; give --size to choose");
}

}  // namespace sdfarm::coordinator
