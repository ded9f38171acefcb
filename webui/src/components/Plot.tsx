// A live line plot (uPlot: small and fast) of chosen fields against x.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

export function Plot(props: { x: number[]; ys: { label: string; data: (number | null)[] }[]; xLabel: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = `${props.xLabel}|${props.ys.map((y) => y.label).join(",")}`;
  const shapeRef = useRef("");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const data = [props.x, ...props.ys.map((y) => y.data)] as uPlot.AlignedData;
    if (!plot.current || shapeRef.current !== shape) {
      plot.current?.destroy();
      shapeRef.current = shape;
      plot.current = new uPlot(
        {
          width: Math.max(200, el.clientWidth),
          height: 220,
          scales: { x: { time: false } },
          axes: [{ label: props.xLabel }, {}],
          series: [{ label: props.xLabel }, ...props.ys.map((y, i) => ({ label: y.label, stroke: COLORS[i % COLORS.length], points: { show: true } }))],
        },
        data,
        el,
      );
    } else {
      plot.current.setData(data);
    }
  }, [props.x, props.ys, shape]);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(200, el.clientWidth), height: 220 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);

  return <div class="plot" ref={box} role="img" aria-label={`Plot of ${props.ys.map((y) => y.label).join(", ")} against ${props.xLabel}`} data-points={props.x.length} data-testid="plot" />;
}
