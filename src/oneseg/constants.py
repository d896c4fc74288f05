"""Names and values that several packages share; nothing here imports anything."""

# The three tasks, in the order of the model's task-token rows.
TASKS = ("semantic", "instance", "panoptic")

# The class index of a pixel that no loss or metric counts (void, crowd, outside the image) in
# the targets built here. Semantic label PNGs name their own value (`dataset.ignore_value`,
# 255 by default); readers map it to this one.
IGNORE = 255

# Files taken as images when listing a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
