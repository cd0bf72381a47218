"""What every layer shares without importing another: the error base of latentwatch."""
