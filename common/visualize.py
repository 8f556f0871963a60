"""Drawing boxes and landmarks on images; loss, accuracy and PR-curve plots (matplotlib, no display needed)."""
import matplotlib

matplotlib.use('Agg')  # headless: CI, servers and DataLoader workers have no display
