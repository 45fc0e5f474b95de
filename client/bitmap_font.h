// A 5x7 ASCII bitmap font for the contact-sheet labels (client/grid.cc):
// capitals and digits are 7 rows tall, descenders (g j p q y) use an 8th row.
// Private to sdfarm_grid.
//
//   const uint8_t* g = font::Glyph('A');  // 5 columns, left to right
//   bool on = (g[x] >> y) & 1;            // x in [0, 5), y in [0, 8), y = 0 on top
//
// Printable ASCII (0x20..0x7E) only; every other byte maps to '?'.
#ifndef SDFARM_CLIENT_BITMAP_FONT_H_
#define SDFARM_CLIENT_BITMAP_FONT_H_

#include <cstdint>

namespace sdfarm::client::font {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 8;  // 7 above the baseline, 1 below

// The glyph's kGlyphWidth column bitmasks (bit y set: pixel (x, y) is ink).
const uint8_t* Glyph(unsigned char c);

}  // namespace sdfarm::client::font

#endif  // SDFARM_CLIENT_BITMAP_FONT_H_
