"""Inference: the predictor (harmonized pixels in, masks and uncertainty on each query's own grid out, prompt
encodings cached and serializable), its input error, and the decoders and encoders of user files (2D images,
volumes, DICOM SEG).

May import: `promptseg.nets`, `storage`, and image/volume libraries; never `serving`, `training` or `registry`.
"""
