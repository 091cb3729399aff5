"""The queue consumer: Celery workers that run the image pipeline on queued jobs."""
