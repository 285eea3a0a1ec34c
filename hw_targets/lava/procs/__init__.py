"""Lava processes of our own (a clean package: Lava executes every .py file in a Process's folder when
it looks for ProcessModels, so nothing else lives here)."""
