"""Contract 4, the HTTP API: the Ray Serve application (`app`: build, deploy, delete; `options`), its routes
(`endpoint`), the gateway middleware, the served model and tasks, the multipart bodies and their files (`uploads`),
the segmentation service behind the routes (`segmentation`) and the encoding of its results (`responses`), the API
models shared with the client, and the client itself.

May import: `promptseg.inference`, `promptseg.nets`, `promptseg.registry`, `storage`, ray.serve and fastapi; never
`training` or `evaluation`.
"""
