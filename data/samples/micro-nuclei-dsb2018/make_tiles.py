"""Cut the 512 × 512 nuclei image and its mask into 4 × 4 tiles of 128 × 128 and write the manifest that ingests
each tile as a case, so that prompts and queries come from different tiles (the sampler takes queries from other
cases than the prompts'). The tiles keep the source's 1.0 spacing and identity affine, shifted to the tile's
origin. Run from anywhere: `python data/samples/micro-nuclei-dsb2018/make_tiles.py` (output is committed).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
TILE = 128


def main() -> None:
    image, label = (nib.load(HERE / name) for name in ("image.nii.gz", "label.nii.gz"))
    pixels, mask = np.asarray(image.dataobj), np.asarray(label.dataobj)
    (HERE / "tiles").mkdir(exist_ok=True)
    cases = []
    for row in range(pixels.shape[0] // TILE):
        for column in range(pixels.shape[1] // TILE):
            window = np.s_[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE, :]
            affine = image.affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array([row * TILE, column * TILE, 0])
            case = f"tile-r{row}c{column}"
            for suffix, source, data in (("image", image, pixels), ("label", label, mask)):
                tile = nib.Nifti1Image(np.ascontiguousarray(data[window]), affine, source.header)
                nib.save(tile, HERE / "tiles" / f"{case}_{suffix}.nii.gz")
            cases.append({"id": case, "image": f"tiles/{case}_image.nii.gz", "label": f"tiles/{case}_label.nii.gz"})
    manifest = {
        "dataset": "micro-nuclei-dsb2018",
        "center": "dsb2018-example",
        "modality": "fluorescence-microscopy",
        "labels": "labels.json",
        "cases": cases,
    }
    header = "# Written by make_tiles.py: one case per 128 × 128 tile (read by storage/raw_dataset.py).\n"
    (HERE / "manifest.yaml").write_text(header + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main()
