"""The CNN side of the product, by stage: data/ (images in), nets/ (the networks and a model with
its card), train/, evaluate/, calibrate/ (the finished model folder), predict/, export/.

Nothing here imports the web app; the web app calls a few functions from here.
"""

# torchvision's CIFAR-10 class names, in label order.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
