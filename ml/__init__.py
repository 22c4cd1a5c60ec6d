"""The CNN side of the product: data, models, training, evaluation, model files, inference.

Nothing here imports the web app; the web app calls a few functions from here.
"""

# torchvision's CIFAR-10 class names, in label order.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
