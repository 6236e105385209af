"""Elastic Beanstalk's Python platform entry point: the WSGI callable is `application`."""

import logging
import os

from service import create_app

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                    format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
application = create_app()
