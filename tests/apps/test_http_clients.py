"""aiohttp's client and httpx, unchanged, on asyncio's loop and on uringloop, against a local
aiohttp server on the same loop, over plain TCP and over TLS (a self-signed certificate made for
the run with the openssl CLI): requests, streamed uploads and downloads, keep-alive, certificate
checks and timeouts."""

import asyncio
import hashlib
import shutil
import ssl
import subprocess

import aiohttp
import httpx
import pytest
from aiohttp import web

CHUNK = 64 * 1024
CHUNKS = 64  # a 4 MiB streamed download


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    if shutil.which('openssl') is None:
        pytest.fail('the openssl command is needed to make the test certificate '
                    '(apt-get install openssl)', pytrace=False)
    folder = tmp_path_factory.mktemp('tls')
    cert, key = str(folder / 'cert.pem'), str(folder / 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj',
                    '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
                    '-keyout', key, '-out', cert], check=True, capture_output=True, timeout=60)
    return cert, key


def pattern(index):
    return bytes([index % 251]) * CHUNK


STREAMED_SHA = hashlib.sha256(b''.join(pattern(i) for i in range(CHUNKS))).hexdigest()


class LocalServer:
    """An aiohttp server on the running loop, on a plain and a TLS port of 127.0.0.1.

    /hello answers the loop's class name and the client's port (to see keep-alive); /sha
    reads a streamed body and answers its length and SHA-256; /stream sends CHUNKS chunks of
    CHUNK bytes; /slow answers only when released; /stall sends one chunk, then waits to be
    released."""

    def __init__(self, certificate):
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(*certificate)
        self.released = asyncio.Event()
        app = web.Application()
        app.router.add_get('/hello', self.hello)
        app.router.add_post('/sha', self.sha)
        app.router.add_get('/stream', self.stream)
        app.router.add_get('/slow', self.slow)
        app.router.add_get('/stall', self.stall)
        self.runner = web.AppRunner(app, shutdown_timeout=5)

    async def __aenter__(self):
        await self.runner.setup()
        plain = web.TCPSite(self.runner, '127.0.0.1', 0)
        await plain.start()
        secure = web.TCPSite(self.runner, '127.0.0.1', 0, ssl_context=self.tls)
        await secure.start()
        ports = [address[1] for address in self.runner.addresses]
        self.url = f'http://127.0.0.1:{ports[0]}'
        self.tls_url = f'https://127.0.0.1:{ports[1]}'
        return self

    async def __aexit__(self, *exc):
        self.released.set()
        await self.runner.cleanup()

    async def hello(self, request):
        loop = type(asyncio.get_running_loop()).__name__
        return web.json_response({'loop': loop, 'client_port': request.transport.get_extra_info(
            'peername')[1]})

    async def sha(self, request):
        digest, length = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        return web.json_response({'length': length, 'sha256': digest.hexdigest()})

    async def stream(self, request):
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(CHUNKS):
            await response.write(pattern(i))
        await response.write_eof()
        return response

    async def slow(self, request):
        await self.released.wait()
        return web.Response(text='late')

    async def stall(self, request):
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'first chunk')
        await self.released.wait()
        return response


async def upload_body(total_chunks=32):
    for i in range(total_chunks):
        yield pattern(i)
        if i % 8 == 0:
            await asyncio.sleep(0)


UPLOAD_LENGTH = 32 * CHUNK
UPLOAD_SHA = hashlib.sha256(b''.join(pattern(i) for i in range(32))).hexdigest()


def client_tls(certificate):
    return ssl.create_default_context(cafile=certificate[0])


@pytest.mark.parametrize('scheme', ['http', 'https'])
def test_aiohttp_client_requests_and_streams(loop, certificate, scheme):
    async def main():
        async with LocalServer(certificate) as server, aiohttp.ClientSession() as session:
            base = server.url if scheme == 'http' else server.tls_url
            tls = client_tls(certificate) if scheme == 'https' else None
            hellos = []
            for _ in range(5):
                async with session.get(base + '/hello', ssl=tls) as resp:
                    hellos.append(await resp.json())
            async with session.post(base + '/sha', data=upload_body(), ssl=tls) as resp:
                uploaded = await resp.json()
            digest, sizes = hashlib.sha256(), 0
            async with session.get(base + '/stream', ssl=tls) as resp:
                async for chunk in resp.content.iter_chunked(10000):
                    digest.update(chunk)
                    sizes += len(chunk)
            return hellos, uploaded, sizes, digest.hexdigest()

    hellos, uploaded, size, sha = run(loop, main())
    assert {hello['loop'] for hello in hellos} == {type(loop).__name__}
    assert len({hello['client_port'] for hello in hellos}) == 1  # one kept-alive connection
    assert uploaded == {'length': UPLOAD_LENGTH, 'sha256': UPLOAD_SHA}
    assert (size, sha) == (CHUNK * CHUNKS, STREAMED_SHA)


def test_aiohttp_client_certificate_check_and_timeouts(loop, certificate):
    async def main():
        async with LocalServer(certificate) as server, aiohttp.ClientSession() as session:
            # Without the certificate as a trusted CA, the handshake is refused.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server.tls_url + '/hello')
            # A whole-request timeout while the server has not answered.
            with pytest.raises(asyncio.TimeoutError):
                await session.get(server.url + '/slow',
                                  timeout=aiohttp.ClientTimeout(total=0.3))
            # A read timeout in the middle of a streamed body, over TLS.
            async with session.get(server.tls_url + '/stall', ssl=client_tls(certificate),
                                   timeout=aiohttp.ClientTimeout(sock_read=0.3)) as resp:
                first = await resp.content.readexactly(len(b'first chunk'))
                with pytest.raises(asyncio.TimeoutError):
                    await resp.content.read()
            async with session.get(server.url + '/hello') as resp:
                after = (await resp.json())['loop']
            return first, after

    assert run(loop, main()) == (b'first chunk', type(loop).__name__)


@pytest.mark.parametrize('scheme', ['http', 'https'])
def test_httpx_requests_and_streams(loop, certificate, scheme):
    async def main():
        async with LocalServer(certificate) as server:
            base = server.url if scheme == 'http' else server.tls_url
            verify = client_tls(certificate) if scheme == 'https' else True
            async with httpx.AsyncClient(verify=verify) as client:
                hellos = [(await client.get(base + '/hello')).json() for _ in range(5)]
                uploaded = (await client.post(base + '/sha', content=upload_body())).json()
                digest, size = hashlib.sha256(), 0
                async with client.stream('GET', base + '/stream') as resp:
                    async for chunk in resp.aiter_bytes():
                        digest.update(chunk)
                        size += len(chunk)
                parallel = await asyncio.gather(*(client.get(base + '/hello')
                                                  for _ in range(10)))
            return hellos, uploaded, size, digest.hexdigest(), [r.status_code for r in parallel]

    hellos, uploaded, size, sha, statuses = run(loop, main())
    assert {hello['loop'] for hello in hellos} == {type(loop).__name__}
    assert len({hello['client_port'] for hello in hellos}) == 1  # one kept-alive connection
    assert uploaded == {'length': UPLOAD_LENGTH, 'sha256': UPLOAD_SHA}
    assert (size, sha) == (CHUNK * CHUNKS, STREAMED_SHA)
    assert statuses == [200] * 10


def test_httpx_certificate_check_and_timeouts(loop, certificate):
    async def main():
        async with LocalServer(certificate) as server:
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.ConnectError, match='CERTIFICATE_VERIFY_FAILED'):
                    await client.get(server.tls_url + '/hello')
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(server.url + '/slow', timeout=0.3)
            async with httpx.AsyncClient(verify=client_tls(certificate)) as client:
                async with client.stream('GET', server.tls_url + '/stall', timeout=0.3) as resp:
                    stream = resp.aiter_raw()
                    first = await stream.__anext__()
                    with pytest.raises(httpx.ReadTimeout):
                        await stream.__anext__()
                after = (await client.get(server.tls_url + '/hello')).json()['loop']
            return first, after

    assert run(loop, main()) == (b'first chunk', type(loop).__name__)
