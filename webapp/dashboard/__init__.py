"""The accuracy dashboard: the page and its gallery images (`views`), what each section shows
(`sections`), and server-side SVG charts (`charts`)."""

from webapp.dashboard import views

PAGES = (views.bp,)
APIS = ()
