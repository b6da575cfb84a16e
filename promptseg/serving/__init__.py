"""Contract 4, the HTTP API: the Ray Serve application (`app`), the gateway middleware, the served model and tasks,
the segmentation service behind the routes, the API models shared with the client, and the client itself.

May import: `promptseg.inference`, `promptseg.nets`, `promptseg.registry`, `storage`, ray.serve and fastapi; never
`training` or `evaluation`.
"""
