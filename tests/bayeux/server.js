'use strict';
// An independent Bayeux 1.0 server for sfsign's interop tests: faye (npm), which the project does not
// write, so the stream client is tested against another server's reading of the spec, not only against
// the emulator's. Long polling on BAYEUX_MOUNT (default /cometd/68.0), HTTPS when BAYEUX_CERT and
// BAYEUX_KEY are given. Prints {"port": N} on its first stdout line once listening.
//
// A small control API beside it (JSON, under /_control/) lets a test act on the server:
//   POST /_control/publish {channel, data}     deliver a data message to the channel's subscribers
//   POST /_control/forget                      the engine forgets every client (faye then answers
//                                              their next message with `401:<clientId>:Unknown client`)
//   POST /_control/arm {channel, forget?, error?, advice?, count?}
//        the next `count` (1) messages on that /meta channel: `forget` destroys the client first (faye
//        itself answers 401 Unknown client); `error` fails the reply with that error string (e.g.
//        CometD's `402::session_unknown`); `advice` replaces the reply's advice (null removes it)
//   GET  /_control/log                         every /meta message received: {channel, clientId, armed?}
const fs = require('fs');
const http = require('http');
const https = require('https');
const faye = require('faye');

const mount = process.env.BAYEUX_MOUNT || '/cometd/68.0';
const timeout = Number(process.env.BAYEUX_TIMEOUT || '2'); // long-poll timeout, seconds

const bayeux = new faye.NodeAdapter({ mount: mount, timeout: timeout });
const engine = bayeux._server._engine;
const remote = new Set(); // client ids handshaken over HTTP (not faye's in-process client)
const log = [];
const armed = [];

function take(channel) {
  const index = armed.findIndex((a) => a.channel === channel);
  if (index < 0) return null;
  const arm = armed[index];
  arm.count -= 1;
  if (arm.count <= 0) armed.splice(index, 1);
  return arm;
}

bayeux.addExtension({
  incoming: function (message, request, callback) {
    if (!String(message.channel).startsWith('/meta/')) return callback(message);
    const entry = { channel: message.channel, clientId: message.clientId || null };
    log.push(entry);
    const arm = take(message.channel);
    if (!arm) return callback(message);
    entry.armed = true;
    request._armed = arm;
    if (arm.error) message.error = arm.error;
    if (arm.forget && message.clientId) {
      engine.destroyClient(message.clientId, function () { callback(message); });
      return;
    }
    callback(message);
  },
  outgoing: function (message, request, callback) {
    const arm = request && request._armed;
    if (arm && message.channel === arm.channel && 'advice' in arm) {
      if (arm.advice === null) delete message.advice;
      else message.advice = arm.advice;
    }
    if (message.channel === '/meta/handshake' && message.successful && request) remote.add(message.clientId);
    callback(message);
  },
});

function control(request, response) {
  const url = new URL(request.url, 'http://localhost');
  let body = '';
  request.on('data', (chunk) => { body += chunk; });
  request.on('end', () => {
    const reply = (status, value) => {
      response.writeHead(status, { 'Content-Type': 'application/json' });
      response.end(JSON.stringify(value));
    };
    let input = {};
    try {
      input = body ? JSON.parse(body) : {};
    } catch (error) {
      return reply(400, { error: 'body must be JSON' });
    }
    if (request.method === 'POST' && url.pathname === '/_control/publish') {
      engine.publish({ channel: input.channel, data: input.data, id: String(Date.now()) });
      return reply(200, { published: true });
    }
    if (request.method === 'POST' && url.pathname === '/_control/forget') {
      const ids = Array.from(remote);
      remote.clear();
      ids.forEach((id) => engine.destroyClient(id));
      return reply(200, { forgotten: ids.length });
    }
    if (request.method === 'POST' && url.pathname === '/_control/arm') {
      armed.push(Object.assign({ count: 1 }, input));
      return reply(200, { armed: armed.length });
    }
    if (request.method === 'GET' && url.pathname === '/_control/log') {
      return reply(200, { meta: log });
    }
    return reply(404, { error: 'no such control endpoint' });
  });
}

const tls = process.env.BAYEUX_CERT && process.env.BAYEUX_KEY;
const server = tls
  ? https.createServer({ cert: fs.readFileSync(process.env.BAYEUX_CERT), key: fs.readFileSync(process.env.BAYEUX_KEY) },
    control)
  : http.createServer(control);
bayeux.attach(server);
server.listen(Number(process.env.BAYEUX_PORT || '0'), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.on('SIGTERM', () => { server.close(); process.exit(0); });
