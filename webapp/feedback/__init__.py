"""Users' corrections: receiving a photo with the right answer (`intake`), the no-JavaScript form's
answer page (`page`), the JSON routes, public and admin (`api`), and the admin review pages
(`review`). The photos themselves are kept by webapp.lifecycle.feedback."""

from webapp.feedback import api, page, review

PAGES = (page.bp, review.bp)
APIS = (api.bp,)
