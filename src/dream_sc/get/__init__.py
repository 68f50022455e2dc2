"""dream_sc.get."""
