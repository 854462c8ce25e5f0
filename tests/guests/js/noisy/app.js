// A policy that writes to stdout and stderr everywhere: in init and in every
// route call. The requested model picks what else it does:
// - `throw`: throws (a trap);
// - `print-trap`: logs, then throws;
// - anything else: routes to the first backend with the label `fixture=noisy`.

let first = null;

export function init(config, backends) {
  console.log('noisy-js init on stdout');
  console.error('noisy-js init on stderr');
  first = backends[0].name;
  return {};
}

export function route(request) {
  console.log(`noisy-js route ${request.model}`);
  console.error(`noisy-js route ${request.model} on stderr`);
  if (request.model === 'throw') throw new Error('noisy-js throws on purpose');
  if (request.model === 'print-trap') {
    console.log('noisy-js prints before it traps');
    throw new Error('noisy-js traps after printing');
  }
  return { tag: 'route', val: { targets: [{ backend: first }], labels: [{ key: 'fixture', value: 'noisy' }] } };
}

export function observe(outcome) {}
