"""The platform on one machine, for `bigbertha demo` and the tests: the service supervisor,
the event gateway, offline chart rendering and the demo scenario. Nothing in the pods imports
it; its extra dependencies come with the `demo` extra."""
