"""GRACE generative cross-modal retrieval (Li et al. 2024): image identifiers, the memorize / retrieve
tasks and trie-constrained retrieval. Import the submodules directly; this package stays light."""
