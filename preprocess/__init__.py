"""Image preprocessing for real photos: FFHQ-style face alignment and pasting results back.

Modules (import what you need; nothing heavy happens at import time, dlib is loaded on first use):
    ffhq_align   landmarks -> oriented quad -> aligned crop + the affine transform (pure numpy/PIL).
    landmarks    face detection + 68 landmarks behind one small interface (`FaceDetector`); dlib backend.
    paste_back   put a reconstruction of an aligned crop back into the photo (inverse transform, soft mask).
    align_folder `align_folder(...)`: the whole job behind align_faces.py (PNGs, alignment.jsonl, skipped.json).
"""
