"""Evaluation of the headline experiment (RA-CM3 section 4): FID, CLIPScore, recognition, CIDEr/BLEU-4,
Recall@K, and the run report. Import the submodules directly; this package stays light.
"""
