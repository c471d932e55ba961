"""nn.Modules shared by the families: attention mixers over the ops, MLPs, embeddings, norms."""
