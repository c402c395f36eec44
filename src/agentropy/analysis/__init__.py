"""Observe: breath analysis of episodes (eruptions, contractions, loops) and of training runs."""
