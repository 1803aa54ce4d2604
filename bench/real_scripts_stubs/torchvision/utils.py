"""save_image and make_grid without image files: the images are not what is measured."""


def save_image(tensor, fp, *args, **kwargs):
    return None


def make_grid(tensor, *args, **kwargs):
    return tensor
