"""Retrieval (RA-CM3 section 3): a CLIP-style dual encoder, the memory (FAISS index + document store in
a folder, or a Milvus collection: `memory.Memory.load` opens either) and the strategies that choose which
documents the generator sees.

Import the submodules directly (`from ramm.retrieval.memory import Memory`); this package stays
light so that `import ramm` does not pull in torch or faiss.
"""
