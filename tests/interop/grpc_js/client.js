// A gRPC client that is not Python: @grpc/grpc-js with the echo service's .proto loaded at run time by
// @grpc/proto-loader, as a Node app in a mesh would be written. tests/interop/test_grpc_js.py points it at a
// meshlet sidecar's outbound port (plaintext) and reads what it prints.
//
//   node client.js HOST:PORT PROTO_ROOT
//
// It makes a fixed series of calls and prints one JSON object, one entry per call: the replies, the initial
// and trailing metadata, and the status (code, its name, details). A failed call is a result, not a crash;
// the exit status is non-zero only when the client itself breaks. Binary (-bin) metadata is printed base64.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const CALL_TIMEOUT_MS = 10000; // a bound on failure, so a broken proxy fails the test instead of hanging it
const HANG_DEADLINE_MS = 500;

const [target, protoRoot] = process.argv.slice(2);
if (!target || !protoRoot) {
  console.error('usage: node client.js HOST:PORT PROTO_ROOT');
  process.exit(2);
}

const definition = protoLoader.loadSync('meshlet_api/echo/v1/echo.proto', {
  includeDirs: [path.resolve(protoRoot)],
  keepCase: true,
  bytes: String, // base64, so payloads print as they went out
  defaults: true,
});
const Echo = grpc.loadPackageDefinition(definition).meshlet_api.echo.v1.Echo;
const client = new Echo(target, grpc.credentials.createInsecure());
const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

function metadata(pairs) {
  const md = new grpc.Metadata();
  for (const [key, value] of pairs) md.add(key, value);
  return md;
}

function printable(md) {
  const out = {};
  for (const [key, value] of Object.entries(md ? md.getMap() : {})) {
    out[key] = Buffer.isBuffer(value) ? value.toString('base64') : value;
  }
  return out;
}

function status(st) {
  return { code: st.code, name: codeNames[st.code], details: st.details, trailing: printable(st.metadata) };
}

function deadline(ms = CALL_TIMEOUT_MS) {
  return { deadline: new Date(Date.now() + ms) };
}

// Resolves with what the caller saw of one call, whatever its outcome.
function observe(call, result) {
  return new Promise((resolve) => {
    call.on('metadata', (md) => {
      result.initial = printable(md);
    });
    call.on('status', (st) => {
      result.status = status(st);
      resolve(result);
    });
  });
}

function unary(method, request, md, options = deadline()) {
  const result = { initial: {} };
  let call;
  const replied = new Promise((resolve) => {
    call = client[method](request, md, options, (error, reply) => {
      result.reply = error ? null : reply;
      resolve();
    });
  });
  return Promise.all([replied, observe(call, result)]).then(() => result);
}

function serverStream(request, md) {
  const call = client.ServerStream(request, md, deadline());
  const result = { initial: {}, replies: [] };
  call.on('data', (reply) => result.replies.push(reply));
  call.on('error', () => {}); // reported through 'status'
  return observe(call, result);
}

function bidi(messages, md) {
  const call = client.BidiStream(md, deadline());
  const result = { initial: {}, replies: [] };
  call.on('data', (reply) => result.replies.push(reply));
  call.on('error', () => {});
  const done = observe(call, result);
  for (const message of messages) call.write({ message });
  call.end();
  return done;
}

function unknownService() {
  // A service the sidecar has no route for, called as raw bytes: no .proto needed to be refused.
  return new Promise((resolve) => {
    const identity = (x) => x;
    client.makeUnaryRequest(
      '/meshlet_api.nowhere.v1.Nowhere/Call', identity, identity, Buffer.alloc(0), new grpc.Metadata(), deadline(),
      (error) => resolve({ status: status(error || { code: grpc.status.OK, details: '', metadata: null }) }),
    );
  });
}

async function main() {
  const blob = Buffer.from([0, 255, 1, 2, 3]);
  const echoed = [['x-echo-metadata', '1'], ['x-tenant', 'acme'], ['x-blob-bin', blob]];
  const payload = Buffer.from('node payload').toString('base64');
  const results = {
    echo: await unary('Echo', { message: 'hello from node', payload }, metadata(echoed)),
    server_stream: await serverStream({ message: 'node' }, metadata([['x-tenant', 'acme']])),
    bidi: await bidi(['a', 'b', 'c'], metadata(echoed)),
    failure: await unary('Echo', { message: 'fail' }, metadata([['x-echo-fail', 'FAILED_PRECONDITION']])),
    deadline: await unary('Echo', { message: 'hang' }, metadata([['x-echo-hang', '1']]), deadline(HANG_DEADLINE_MS)),
    unknown_service: await unknownService(),
  };
  process.stdout.write(JSON.stringify(results) + '\n');
  client.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
