"""Fisher collection (hooks on the Linear layers of an HF causal LM) and the Fisher file format."""
