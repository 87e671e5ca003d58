"""The web console (docs/console.md): a static page at ``/console`` over the admin API.
``server.console.routes.router`` is what the app includes."""
