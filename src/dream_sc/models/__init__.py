"""Pure Pyro/torch model code: likelihoods, technical, cis and trans models, inference."""
