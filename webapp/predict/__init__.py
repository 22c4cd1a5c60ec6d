"""Classifying photos: the upload page (`page`), the JSON API with explanations, TorchServe's
routes, the model's description, health and the OpenAPI document (`api`, `openapi.json`), reading
photos from a request (`request_photos`), the model this worker serves (`serving`) and
micro-batching (`batching`)."""

from webapp.predict import api, page

PAGES = (page.bp,)
APIS = (api.bp,)
