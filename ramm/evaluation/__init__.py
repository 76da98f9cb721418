"""Generic metrics; the caller gives the references and the feature space (RA-CM3 section 4):
`fid` (FID on any encoder's features), `clipscore`, `recognition` (is the nearest real image the asked
document), `captioning` (CIDEr, BLEU-4), `token_loss` (a generator's loss on image and caption tokens) and
`retrieval_usage` (does an RA generator use what it retrieves). Recall@K is `ramm.retrieval.recall`; the
EmojiBench run's evaluation and report are the lab's (`ramm_lab.headline`, `ramm_lab.report`). Import the
submodules directly; this package stays light.
"""
