"""What the API and the workers share: storage, job records, the queue, the local stack.

Nothing here is imported by the image pipeline or the CLI, and nothing here imports the ML stack.
"""
