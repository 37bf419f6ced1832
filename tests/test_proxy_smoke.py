from tests.conftest import echoed


async def test_allowed_get_is_forwarded_with_cors_headers(make_proxy, upstream):
    proxy = await make_proxy()
    resp = await proxy.client.get("/api/x?q=1", headers={"Origin": "https://app.example.com"})
    assert resp.status == 200
    body = await resp.json()
    assert body["raw_path"] == "/v1/api/x?q=1"
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert resp.headers["Vary"] == "Accept-Encoding, Origin"
    seen = echoed(body)
    assert seen["via"] == "1.1 corsproxy"
    assert seen["x-forwarded-for"] == "127.0.0.1"
