'use strict';
// In-sandbox runner for Node.js: speaks the control protocol on fd 0 (a socket to the
// service) and calls main(arguments), sync or async, with RAGFlow's semantics.
//   runner -> service  {"type": "ready", "preload_errors": {module: error}}
//   service -> runner  {"type": "run", "source": file name in the working directory, "arguments": {...}}
//   runner -> service  {"type": "done", "exit_code": n, "returned": bool, "result_json": str|null}
// The result travels on the control socket, never on stdout, so printing a fake result
// marker cannot forge it.  Standard library only.

const net = require('net');
const path = require('path');

const ctl = new net.Socket({ fd: 0, readable: true, writable: true });
let buffered = '';
let started = 0;

function send(message, callback) {
  ctl.write(JSON.stringify(message) + '\n', callback);
}

function finish(exitCode, resultJson) {
  send({
    type: 'done',
    exit_code: exitCode,
    returned: resultJson !== null,
    result_json: resultJson,
    duration_ms: Number(process.hrtime.bigint() - started) / 1e6,
  }, () => process.exit(exitCode));
}

function preload(modules) {
  const errors = {};
  for (const name of modules) {
    try {
      require(name);
    } catch (err) {
      errors[name] = String(err && err.message ? err.message : err);
    }
  }
  return errors;
}

function settle(value) {
  if (typeof value === 'undefined') {
    console.error('Error: main() must return a value. Use null for an empty result.');
    finish(1, null);
    return;
  }
  let payload;
  try {
    payload = JSON.stringify({ present: true, value, type: 'json' });
  } catch (err) {
    payload = undefined;
  }
  if (typeof payload === 'undefined') {
    console.error('Error: main() returned a non-JSON-serializable value.');
    finish(1, null);
    return;
  }
  finish(0, payload);
}

function run(request) {
  started = process.hrtime.bigint();
  const source = path.resolve(process.cwd(), request.source);
  process.argv = [process.argv[0], source];
  let main;
  try {
    const mod = require(source);
    main = typeof mod === 'function' ? mod : mod && mod.main;
  } catch (err) {
    console.error(err);
    finish(1, null);
    return;
  }
  if (typeof main !== 'function') {
    console.error('Error: main is not a function');
    finish(1, null);
    return;
  }
  Promise.resolve()
    .then(() => main(request.arguments || {}))
    .then(settle, (err) => {
      console.error(err);
      finish(1, null);
    });
}

ctl.setEncoding('utf8');
ctl.on('data', (chunk) => {
  buffered += chunk;
  const newline = buffered.indexOf('\n');
  if (newline < 0 || started) {
    return;
  }
  const request = JSON.parse(buffered.slice(0, newline));
  run(request);
});
ctl.on('end', () => {
  if (!started) {
    process.exit(70);
  }
});

const modules = (process.env.SANDBOX_PRELOAD || '').split(',').filter(Boolean);
send({ type: 'ready', preload_errors: preload(modules) });
