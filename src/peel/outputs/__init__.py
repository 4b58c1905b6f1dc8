"""What run folders are rendered as: the report (report.py) and model cards (model_card.py)."""
