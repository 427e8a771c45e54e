"""KubeRay for tests: a port of its controller validation and a stand-in that runs RayJobs on local Ray."""
