"""What a user reads and what a file keeps, as text: keys blanked out, control characters escaped, counts in
words, names suggested."""
