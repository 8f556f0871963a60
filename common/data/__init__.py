"""What is on disk: detection sets (WIDER FACE, Pascal VOC), ImageFolders, image files, and the augmentations that move
boxes and landmarks with the pixels."""
