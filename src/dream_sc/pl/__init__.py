"""dream_sc.pl."""
