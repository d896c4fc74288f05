// COCO run-length encoding, as pycocotools writes it: decode a compressed "counts" string
// into a column-major mask (the format of every "segmentation" the API returns).
"use strict";

/** Run lengths of a compressed RLE string (pycocotools' rleFrString). */
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** Uint8Array [H * W] row-major, 1 inside the mask, of {size: [H, W], counts: "..."}. */
function rleDecode(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  let i = 0; // column-major position
  counts.forEach((run, index) => {
    if (index % 2 === 1) {
      for (let j = i; j < i + run; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    i += run;
  });
  return mask;
}
