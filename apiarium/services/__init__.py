"""The gateway's services, with no Tornado in them: chat, media, keys.  Handlers parse a
request, call one of these, and write its answer; ``app.py`` builds them."""
