"""One module per GUI page. Each has `async def data(sources)` returning the JSON that
`/api/<page>` serves, and renders its HTML only from that JSON, so the page, its live fragment
and the API can never disagree."""
