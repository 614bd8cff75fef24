'use strict';
// In-sandbox runner for Node.js: speaks the control protocol on fd 0 (a socket to the
// service) and calls main(arguments), sync or async, with RAGFlow's semantics.
//   runner -> service  {"type": "ready", "preload_errors": {module: error}}
//   service -> runner  {"type": "run", "source": file name in the working directory, "arguments": {...}}
//   runner -> service  {"type": "artifact", "name": str, "size": n} + n bytes, per artifact, when asked
//   runner -> service  {"type": "done", "exit_code": n, "returned": bool, "result_json": str|null}
// The result travels on the control socket, never on stdout, so printing a fake result
// marker cannot forge it.  A sealed sandbox (no host workspace: see the Python runner) has the
// run frame ask the runner to write the source first ("write_source") and to send, after an
// exit code 0, the files artifacts/ and then the workspace root hold ("artifacts": the
// service's rules, which it applies again).  Standard library only.

const fs = require('fs');
const net = require('net');
const path = require('path');

const ctl = new net.Socket({ fd: 0, readable: true, writable: true });
let buffered = '';
let started = 0;
let workdir = process.cwd();
let artifactRules = null;

function send(message, callback) {
  ctl.write(JSON.stringify(message) + '\n', callback);
}

function acceptable(name, suffixes) {
  return name.length > 0 && !name.startsWith('.') && !name.includes('/') && !name.includes('\\') &&
    !name.includes('..') && !/[\x00-\x1f\x7f]/.test(name) && suffixes.has(path.extname(name).toLowerCase());
}

function regularContent(file, maxBytes) {
  let fd;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    return null;
  }
  try {
    const info = fs.fstatSync(fd);
    if (!info.isFile() || info.size <= 0 || info.size > maxBytes) {
      return null;
    }
    const chunks = [];
    let size = 0;
    while (size <= maxBytes) { // up to one byte past the cap, in chunks of at most 1 MB, like the Python runner
      const chunk = Buffer.alloc(Math.min(1 << 20, maxBytes + 1 - size));
      const read = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) {
        break;
      }
      chunks.push(chunk.subarray(0, read));
      size += read;
    }
    return size > 0 && size <= maxBytes ? Buffer.concat(chunks, size) : null;
  } catch (err) {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

function collectArtifacts(rules) {
  const suffixes = new Set(rules.suffixes || []);
  const maxCount = Number(rules.max_count || 0);
  const maxBytes = Number(rules.max_bytes || 0);
  const taken = new Set(rules.exclude || []);
  const found = [];
  for (const directory of [path.join(workdir, 'artifacts'), workdir]) {
    let names = [];
    try {
      if (!fs.lstatSync(directory).isSymbolicLink()) {
        names = fs.readdirSync(directory).sort();
      }
    } catch (err) {
      names = [];
    }
    for (const name of names) {
      if (found.length >= maxCount) {
        return found;
      }
      if (taken.has(name) || !acceptable(name, suffixes)) {
        continue;
      }
      const data = regularContent(path.join(directory, name), maxBytes);
      if (data !== null) {
        found.push([name, data]);
        taken.add(name);
      }
    }
  }
  return found;
}

function finish(exitCode, resultJson) {
  if (exitCode === 0 && artifactRules) {
    try {
      for (const [name, data] of collectArtifacts(artifactRules)) {
        ctl.write(JSON.stringify({ type: 'artifact', name, size: data.length }) + '\n');
        ctl.write(data);
      }
    } catch (err) {
      console.error('Error: sending the artifacts failed: ' + err);
    }
  }
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
  workdir = process.cwd();
  artifactRules = request.artifacts || null;
  const source = path.resolve(workdir, request.source);
  if (request.write_source && typeof request.code === 'string') {
    try {
      fs.writeFileSync(source, request.code, { mode: 0o444 });
    } catch (err) {
      console.error(err);
      finish(1, null);
      return;
    }
  }
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

try {
  fs.mkdirSync('artifacts', { mode: 0o755 }); // a sealed workspace starts empty; a host one has it
} catch (err) {
  // it exists
}
const modules = (process.env.SANDBOX_PRELOAD || '').split(',').filter(Boolean);
send({ type: 'ready', preload_errors: preload(modules) });
